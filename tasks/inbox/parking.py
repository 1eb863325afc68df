"""Parked events: an event that needs another one first waits (`waiting`) until a unit of work provides
what it waits for; the scheduled retry and the sweeper find the rest.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, inspect, literal, select, text, update
from sqlalchemy.orm import Session

from db.enums import InboxStatus
from db.models import InboxEvent
from db.types import utcnow

RUNNABLE = (InboxStatus.PENDING, InboxStatus.PROCESSING)


# A parked event wakes when what it waits for is provided: one still `waiting`, and one that gave up waiting
# (`failed` by `expire_waiting`, which keeps the key it waited for): what it needed has come after all.
WAKEABLE = (InboxStatus.WAITING, InboxStatus.FAILED)
WAKEABLE_SQL = ", ".join(f"'{status.value}'" for status in WAKEABLE)  # the same, in a statement's text


def wake_waiting(*, session: Session, keys: set[str] | list[str]) -> list[int]:
    """Return parked events waiting for any of `keys` (or that gave up waiting for one) to `pending`; the
    caller enqueues them after commit."""
    if not keys:
        return []
    table = InboxEvent.__table__  # Core, not ORM: no session synchronisation needed for rows not loaded
    rows = session.execute(
        update(table)
        .where(table.c.status.in_([status.value for status in WAKEABLE]), table.c.waiting_for.in_(sorted(keys)))
        .values(status=InboxStatus.PENDING.value, waiting_for=None, processed_at=None)
        .returning(table.c.id)
    ).scalars()
    return sorted(rows)


# The row that ran is recorded processed and the rows parked on what it provided are woken, in one
# statement (PostgreSQL). The two UPDATEs touch different rows: a row that ran was never `waiting`.
_PROCESSED_AND_WAKE = text(f"""
WITH done AS (
    UPDATE inbox_event SET status = :status, attempts = :attempts, processed_at = :processed_at,
        last_error = :last_error, waiting_for = :waiting_for
    WHERE id = :id
)
UPDATE inbox_event SET status = '{InboxStatus.PENDING.value}', waiting_for = NULL, processed_at = NULL
WHERE status IN ({WAKEABLE_SQL}) AND waiting_for = ANY(CAST(:keys AS text[]))
RETURNING id
""")

# what `finish_and_wake` writes of the row that ran; any other change to it takes the ORM's own UPDATE
FINISHED_COLUMNS = frozenset({"status", "attempts", "processed_at", "last_error", "waiting_for"})


def finish_and_wake(*, session: Session, event: InboxEvent, keys: set[str] | list[str]) -> list[int] | None:
    """Write the finished row `event` (its status, attempts and stamps as the runner set them on the object)
    and wake the events parked on `keys`, in one statement; None where this does not apply (not
    PostgreSQL, or the row has other unsaved changes): the caller flushes the row and calls `wake_waiting`.

    The row is taken out of the session (its changes are written here, not by a flush).
    """
    if session.get_bind().dialect.name != "postgresql":
        return None
    state = inspect(event)
    if not set(state.committed_state) <= FINISHED_COLUMNS:
        return None
    values = {"id": event.id, "status": event.status.value, "attempts": event.attempts,
              "processed_at": event.processed_at, "last_error": event.last_error, "waiting_for": event.waiting_for,
              "keys": sorted(keys)}
    session.expunge(event)  # before the statement's autoflush: the row's changes are the statement's
    return sorted(session.execute(_PROCESSED_AND_WAKE, values).scalars())


def requeue_waiting(*, session: Session, older_than: timedelta = timedelta(0), limit: int = 500) -> list[int]:
    """The scheduled retry of parked events (in case what they wait for came by another path).

    Fair at any backlog: the rows sent longest ago come first (`enqueued_at`, else `received_at`), and
    each one taken is stamped as sent now, so a backlog larger than `limit` is walked round by round
    instead of the oldest rows being taken every time.
    """
    now = utcnow()
    cutoff = now - older_than
    last_sent = func.coalesce(InboxEvent.enqueued_at, InboxEvent.received_at)
    ids = session.scalars(
        select(InboxEvent.id)
        .where(InboxEvent.status == InboxStatus.WAITING, InboxEvent.received_at <= cutoff)
        .order_by(last_sent, InboxEvent.id)
        .limit(limit)
    ).all()
    if not ids:
        return []
    # still waiting when written: one woken or finished meanwhile (its provider committed after the read) keeps
    # its status, and a finished event is never made pending again
    return list(session.scalars(
        update(InboxEvent).where(InboxEvent.id.in_(ids), InboxEvent.status == InboxStatus.WAITING)
        .values(status=InboxStatus.PENDING, waiting_for=None, enqueued_at=now)
        .returning(InboxEvent.id)
    ))


def expire_waiting(*, session: Session, horizon: timedelta, limit: int = 1000,
                   now: datetime | None = None) -> list[int]:
    """Parked events nothing woke within `horizon` of their arrival (waiting longer than it) end `failed` ("waited
    for …"): visible on the dashboard and replayable, instead of waiting forever. Each keeps the key it waited
    for, so what provides it later still wakes it (`wake_waiting`)."""
    table = InboxEvent.__table__
    now = now or utcnow()
    hours = round(horizon.total_seconds() / 3600, 2)
    ids = session.scalars(
        select(table.c.id)
        .where(table.c.status == InboxStatus.WAITING.value, table.c.received_at < now - horizon)
        .order_by(table.c.id)
        .limit(limit)
    ).all()
    if ids:
        session.execute(
            update(table).where(table.c.id.in_(ids), table.c.status == InboxStatus.WAITING.value)
            .values(status=InboxStatus.FAILED.value, processed_at=now,
                    last_error=literal("waited for ") + func.coalesce(table.c.waiting_for, "?")
                    + literal(f" for more than {hours:g} hours (WAIT_HORIZON_HOURS); nothing provided it"))
        )
    return list(ids)


def _stale(sent_before: datetime):
    return (InboxEvent.status.in_(RUNNABLE), func.coalesce(InboxEvent.enqueued_at, InboxEvent.received_at) <= sent_before)


def stale_pending(*, session: Session, sent_before: datetime, limit: int = 1000) -> list[int]:
    """Rows still `pending` whose message was last sent (or, never sent, which arrived) at `sent_before` or
    earlier — their message was lost, or sending failed: the sweeper's list, oldest first. A row sent again
    (`store.mark_enqueued`) after `sent_before` leaves the list."""
    return list(session.scalars(select(InboxEvent.id).where(*_stale(sent_before)).order_by(InboxEvent.id)
                                .limit(limit)).all())


def count_stale_pending(*, session: Session, sent_before: datetime) -> int:
    """How many rows `stale_pending` would list without a limit."""
    return session.scalar(select(func.count()).select_from(InboxEvent).where(*_stale(sent_before)))
