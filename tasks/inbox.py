"""The durable inbox: store verified events once, then process each exactly once in effect.

`store_event` is what the ingress calls (insert keyed on (source, event id), ON CONFLICT DO NOTHING).
`process_event` is what the runner actor calls inside one transaction: it locks the row, serializes
on the event's subject, runs the registered handler in a savepoint and records the outcome on the
row, so a handler's effects and the row's new status commit together or not at all.
"""
from __future__ import annotations

import enum
import json
import logging
import traceback
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus
from db.models import InboxEvent
from db.types import utcnow
from tasks.errors import Ignored, NeedsRemote, PermanentError, TaskError, WaitFor

log = logging.getLogger("coursepipe.inbox")

DEFAULT_MAX_ATTEMPTS = 5
PROVIDES_KEY = "coursepipe.provides"
SETTINGS_KEY = "coursepipe.settings"
REMOTE_KEY = "coursepipe.remote"
MAX_REMOTE_ROUNDS = 3

Handler = Callable[[Session, InboxEvent], None]
_HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(source: InboxSource, *types: str) -> Callable[[Handler], Handler]:
    """Register a handler for (source, type). A handler takes (session, event) and never commits."""

    def register(fn: Handler) -> Handler:
        for type_ in types:
            _HANDLERS[(source.value, type_)] = fn
        return fn

    return register


def handler_for(source: str, type_: str) -> Handler | None:
    _load_handlers()
    return _HANDLERS.get((source, type_))


def _load_handlers() -> None:
    # handler modules register themselves on import; import them once, lazily
    import tasks.handlers  # noqa: F401


def provides(session: Session, *keys: str) -> None:
    """Declare that this unit of work makes `keys` available (wakes events waiting for them).

    It also takes each key's advisory lock until commit: an event parking itself on that key holds
    the same lock while it decides to wait, so a provider can never wake the parked rows just before
    the waiter's `waiting` status commits (a lost wake-up).
    """
    session.info.setdefault(PROVIDES_KEY, set()).update(keys)
    for key in sorted(keys):
        _lock_subject(session, key)


def settings_of(session: Session):
    """The process settings the runner attached to this unit of work (None outside the runner)."""
    return session.info.get(SETTINGS_KEY)


def fetched(session: Session, key: str, fetch: Callable[[], Any]) -> Any:
    """What a remote service answered for `key` (fetched by the caller outside the transaction).

    Not fetched yet: raises NeedsRemote, so no network call ever runs inside the handler's
    transaction. A fetch that failed re-raises its error here, where the runner classifies it.
    `fetch` runs after the transaction ended: it must close over plain values, not ORM objects.
    """
    answers = session.info.get(REMOTE_KEY) or {}
    if key not in answers:
        raise NeedsRemote(key, fetch)
    answer = answers[key]
    if isinstance(answer, BaseException):
        raise answer
    return answer


# --------------------------------------------------------------------------- storing


def _dialect_name(bind: Session | Connection) -> str:
    return bind.dialect.name if isinstance(bind, Connection) else bind.get_bind().dialect.name


REDELIVERY_RESEND_AFTER = timedelta(seconds=5)


@dataclass(frozen=True)
class Stored:
    id: int
    duplicate: bool
    # a redelivery of an event still pending well after it was stored (or last re-sent): its message may
    # be lost (an ingress killed between commit and send), so the caller sends it again. The resend is
    # recorded (enqueued_at) in the same statement, so it happens at most once per interval, whoever asks
    resend: bool = False


# psycopg's own placeholders: the ingress runs this on the driver connection, past SQLAlchemy
_PG_STORE = (
    "INSERT INTO inbox_event (source, event_id, type, payload, subject, occurred_at, status, attempts, received_at)"
    " VALUES (%(source)s, %(event_id)s, %(type)s, %(payload)s::jsonb, %(subject)s, %(occurred_at)s, 'pending', 0,"
    " now()) ON CONFLICT (source, event_id) DO NOTHING RETURNING id"
)
_PG_EXISTING = "SELECT id FROM inbox_event WHERE source = %s AND event_id = %s"
# a redelivery claims the resend by moving enqueued_at: of concurrent redeliveries one row update wins
_PG_RESEND = (
    "UPDATE inbox_event SET enqueued_at = now() WHERE source = %s AND event_id = %s AND status = 'pending'"
    " AND coalesce(enqueued_at, received_at) < now() - %s RETURNING id"
)


def store_event(
    *,
    session: Session | Connection | Any,
    source: InboxSource,
    event_id: str,
    type: str,
    payload: dict[str, Any],
    subject: str | None,
    occurred_at: datetime | None,
    raw: str | None = None,
) -> Stored:
    """Insert the event once per (source, event id). A redelivery returns the first row's id.

    `session` may be a Connection in autocommit mode, or on PostgreSQL a psycopg connection in
    autocommit mode (`Database.direct_autocommit`, the ingress's hot path): the insert is then one
    durable statement, one round trip. `raw` is the verified JSON text of `payload`; on
    PostgreSQL it is stored as received, without serializing the payload again.
    """
    table = InboxEvent.__table__
    if occurred_at is None and source is InboxSource.STRIPE and isinstance(payload.get("created"), int):
        occurred_at = datetime.fromtimestamp(payload["created"], timezone.utc)  # Stripe's own event time
    if not isinstance(session, (Session, Connection)):
        driver = session  # a psycopg connection in autocommit mode (Database.direct_autocommit)
    elif _dialect_name(session) == "postgresql":
        if isinstance(session, Connection):
            if not session.in_transaction():
                session.begin()  # so that a caller's commit() commits (a no-op under AUTOCOMMIT)
            driver = session.connection.driver_connection
        else:
            driver = session.connection().connection.driver_connection
    else:
        driver = None
    if driver is not None:
        # the hot path, on the driver connection: SQLAlchemy's statement handling costs as much as the insert
        row = driver.execute(
            _PG_STORE,
            dict(source=source.value, event_id=event_id, type=type, payload=raw or json.dumps(payload),
                 subject=subject, occurred_at=occurred_at),
        ).fetchone()
        if row:
            return Stored(int(row[0]), False)
        resent = driver.execute(_PG_RESEND, (source.value, event_id, REDELIVERY_RESEND_AFTER)).fetchone()
        if resent:
            return Stored(int(resent[0]), True, resend=True)
        existing = driver.execute(_PG_EXISTING, (source.value, event_id)).fetchone()
        return Stored(int(existing[0]), True)
    else:
        values = dict(source=source.value, event_id=event_id, type=type, payload=payload, subject=subject,
                      occurred_at=occurred_at, status=InboxStatus.PENDING.value, attempts=0, received_at=utcnow())
        stmt = sqlite_insert(table).values(**values).on_conflict_do_nothing(index_elements=["source", "event_id"])
        new_id = session.execute(stmt.returning(table.c.id)).scalar()
        if new_id is not None:
            return Stored(int(new_id), False)
        now = utcnow()
        cutoff = now - REDELIVERY_RESEND_AFTER
        resent = session.execute(
            update(table).where(
                table.c.source == source.value, table.c.event_id == event_id,
                table.c.status == InboxStatus.PENDING.value,
                or_(table.c.enqueued_at < cutoff, and_(table.c.enqueued_at.is_(None), table.c.received_at < cutoff)),
            ).values(enqueued_at=now).returning(table.c.id)
        ).scalar()
        if resent is not None:
            return Stored(int(resent), True, resend=True)
        existing = session.execute(
            select(table.c.id).where(table.c.source == source.value, table.c.event_id == event_id)
        ).scalar_one()
        return Stored(int(existing), True)


# --------------------------------------------------------------------------- processing


class Outcome(str, enum.Enum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    WAITING = "waiting"
    FAILED = "failed"
    FETCH = "fetch"  # the handler needs remote data: fetch it outside the transaction, then run again
    RETRY = "retry"  # transient failure recorded; the caller should retry with backoff
    SKIPPED = "skipped"  # not ours to run now (already final, or locked by another worker)


@dataclass
class Result:
    outcome: Outcome
    error: str | None = None
    woken: list[int] = field(default_factory=list)
    needs: NeedsRemote | None = None
    # what the row was (source, event id, type, subject, received_at), for the caller's log line
    summary: tuple | None = None


LOCKS_KEY = "coursepipe.locks"


def lock_key(subject: str) -> int:
    """The advisory-lock key of a subject (the runner, `provides` and the purchase fast path agree on it)."""
    return zlib.crc32(subject.encode())


def _lock_subject(session: Session, subject: str | None) -> None:
    """Two events about the same thing never race (PostgreSQL advisory lock until commit)."""
    if not subject or session.get_bind().dialect.name != "postgresql":
        return
    held = session.info.setdefault(LOCKS_KEY, set())
    if subject in held:  # already ours in this transaction (e.g. a handler provides its own subject)
        return
    session.execute(select(func.pg_advisory_xact_lock(lock_key(subject))))
    held.add(subject)


RUNNABLE = (InboxStatus.PENDING, InboxStatus.PROCESSING)


def _claim(session: Session, inbox_id: int, *, skip_locked: bool) -> InboxEvent | None:
    query = select(InboxEvent).where(InboxEvent.id == inbox_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    event = session.scalar(query)
    return event if event is not None and event.status in RUNNABLE else None


def process_event(
    *, session: Session, inbox_id: int, max_attempts: int = DEFAULT_MAX_ATTEMPTS, settings: Any = None,
    remote: dict[str, Any] | None = None, fast: bool = True,
) -> Result:
    """Run the handler for one inbox row; its effects and the row's new status commit together.

    This owns the whole transaction of `session` (the caller commits it): when the handler raises,
    its effects are rolled back and the outcome is recorded on the row in a fresh transaction.
    `settings` (thresholds, alert recipients) reach handlers through `settings_of(session)`.
    On PostgreSQL a new paid course purchase takes `tasks.fast_purchase` (same effects, three
    statements); `fast=False` forces the general path.
    """
    if settings is not None:
        session.info[SETTINGS_KEY] = settings
    session.info[REMOTE_KEY] = remote or {}
    session.info[LOCKS_KEY] = set()
    if fast and session.get_bind().dialect.name == "postgresql":
        from tasks import fast_purchase  # it builds on this module

        done = fast_purchase.process(session, inbox_id)
        if done is not None:
            return done
    event = _claim(session, inbox_id, skip_locked=True)
    if event is None:
        # unknown id, already final, or another worker holds it now (it finishes, or rolls back and is swept)
        return Result(Outcome.SKIPPED)
    _lock_subject(session, event.subject)
    summary = (event.source.value, event.event_id, event.type, event.subject, event.received_at)
    result = _run_claimed(session, event, inbox_id, max_attempts)
    result.summary = summary
    return result


def _run_claimed(session: Session, event: InboxEvent, inbox_id: int, max_attempts: int) -> Result:
    attempts = event.attempts + 1
    now = utcnow()
    handler = handler_for(event.source.value, event.type)
    if handler is None:
        event.attempts = attempts
        _finish(event, InboxStatus.IGNORED, now)
        return Result(Outcome.IGNORED)

    error = _attempt(session, handler, event)
    if error is None:
        return _processed(session, event, attempts, now)
    if isinstance(error, NeedsRemote):  # rolled back, the row untouched: the caller fetches and calls again
        return Result(Outcome.FETCH, str(error), needs=error)
    event = _reclaim(session, inbox_id, error)
    if event is None:
        return Result(Outcome.SKIPPED)
    if isinstance(error, WaitFor):
        # Look once more, now under the awaited key's lock: a provider that committed meanwhile is
        # visible, and one still to come waits for our `waiting` to commit before it wakes parked rows.
        # A savepoint, so that undoing this second try keeps the locks.
        savepoint = session.begin_nested()
        error = _attempt(session, handler, event, savepoint=savepoint)
        if error is None:
            return _processed(session, event, attempts, now)
    event.attempts = attempts
    return _record_failure(event, error, now, max_attempts)


def _attempt(session: Session, handler: Handler, event: InboxEvent, savepoint=None) -> Exception | None:
    """Run the handler; on an error undo its effects (the transaction, or just the savepoint)."""
    session.info.pop(PROVIDES_KEY, None)
    try:
        handler(session, event)
        session.flush()  # constraint violations surface here, inside the failure path
    except Exception as exc:
        (savepoint or session).rollback()
        session.info.pop(PROVIDES_KEY, None)
        if savepoint is None:  # the transaction ended: its advisory locks are gone
            session.info[LOCKS_KEY] = set()
        return exc
    if savepoint is not None:
        savepoint.commit()
    return None


def _reclaim(session: Session, inbox_id: int, error: Exception) -> InboxEvent | None:
    """After a rollback: the row and its locks again (and the awaited key's, for a parked event)."""
    event = _claim(session, inbox_id, skip_locked=False)
    if event is not None:
        _lock_subject(session, event.subject)
        if isinstance(error, WaitFor):
            _lock_subject(session, error.key)
    return event


def run_event(*, unit_of_work: Callable, inbox_id: int, settings: Any = None,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS, fast: bool = True) -> Result:
    """`process_event` in units of work of its own (`unit_of_work()` opens one transaction), with the
    remote look-ups a handler asks for fetched between them, outside any transaction.

    Like `publishing.publish`, this owns its transactions: intent → network call → outcome.
    """
    remote: dict[str, Any] = {}
    for _ in range(MAX_REMOTE_ROUNDS):
        with unit_of_work() as session:
            result = process_event(session=session, inbox_id=inbox_id, max_attempts=max_attempts,
                                   settings=settings, remote=remote, fast=fast)
        if result.outcome is not Outcome.FETCH:
            return result
        remote[result.needs.key] = _fetch(result.needs)
    # a handler that keeps asking for more is a defect: recorded on the row, visible and replayable
    with unit_of_work() as session:
        event = _claim(session, inbox_id, skip_locked=True)
        if event is None:
            return Result(Outcome.SKIPPED)
        event.attempts += 1
        return _record_failure(event, PermanentError(
            f"the handler kept asking for remote data ({MAX_REMOTE_ROUNDS} rounds)"), utcnow(), max_attempts)


def run_message(*, database: Any, inbox_id: int, settings: Any = None, purchase: bool = False) -> Result:
    """What a worker runs for one message. One the ingress marked as a purchase tries
    `fast_purchase.run` first (no ORM session); whatever that does not finish goes to `run_event`."""
    if isinstance(inbox_id, bool) or not isinstance(inbox_id, int):  # no row to record it on: said, then dropped
        log.error("a message names inbox row %r, which is not a row id: dropped", inbox_id)
        return Result(Outcome.SKIPPED, f"not an inbox row id: {inbox_id!r}")
    if purchase:
        from tasks import fast_purchase  # it builds on this module

        done = fast_purchase.run(database, inbox_id)
        if done is not None:
            return done
    return run_event(unit_of_work=database.session_scope, inbox_id=inbox_id, settings=settings, fast=not purchase)


def with_remote(unit_of_work: Callable, work: Callable[[Session], Any]) -> Any:
    """`work(session)` in a unit of work of its own, for callers outside the runner (admin re-fulfilment):
    remote look-ups it asks for (`fetched`) are made between attempts, outside any transaction."""
    remote: dict[str, Any] = {}
    for _ in range(MAX_REMOTE_ROUNDS):
        try:
            with unit_of_work() as session:
                session.info[REMOTE_KEY] = remote
                return work(session)
        except NeedsRemote as needs:  # rolled back by the unit of work
            remote[needs.key] = _fetch(needs)
    raise PermanentError(f"kept asking for remote data ({MAX_REMOTE_ROUNDS} rounds)")


def _fetch(needs: NeedsRemote) -> Any:
    try:
        return needs.fetch()
    except Exception as exc:  # handed back to the handler, which raises it where it is classified
        return exc


def _processed(session: Session, event: InboxEvent, attempts: int, now: datetime) -> Result:
    event.attempts = attempts  # set after the handler: one UPDATE of the row, with its status
    _finish(event, InboxStatus.PROCESSED, now)
    # what the handler provided, and the event's own subject, may be what a parked event waits for
    keys = session.info.pop(PROVIDES_KEY, set()) | ({event.subject} if event.subject else set())
    woken = wake_waiting(session=session, keys=keys)
    return Result(Outcome.PROCESSED, woken=woken)


def _record_failure(event: InboxEvent, exc: Exception, now: datetime, max_attempts: int) -> Result:
    if isinstance(exc, Ignored):
        _finish(event, InboxStatus.IGNORED, now, str(exc) or None)
        return Result(Outcome.IGNORED, str(exc) or None)
    if isinstance(exc, WaitFor):
        event.status = InboxStatus.WAITING
        event.waiting_for = exc.key
        event.last_error = str(exc)
        return Result(Outcome.WAITING, str(exc))
    if isinstance(exc, (PermanentError, DataError)):  # DataError: a value the column cannot hold, every time
        _finish(event, InboxStatus.FAILED, now, f"{type(exc).__name__}: {exc}")
        log.warning("event %s (%s) failed permanently: %s", event.event_id, event.type, exc)
        return Result(Outcome.FAILED, str(exc))
    # transient: anything not known to be permanent
    message = f"{type(exc).__name__}: {exc}"
    if event.attempts >= max_attempts:
        _finish(event, InboxStatus.FAILED, now, f"retries exhausted; {message}")
        log.error("event %s (%s) failed after %d attempts: %s", event.event_id, event.type, event.attempts,
                  "".join(traceback.format_exception_only(exc)).strip())
        return Result(Outcome.FAILED, message)
    event.status = InboxStatus.PENDING
    event.last_error = message
    return Result(Outcome.RETRY, message)


def _finish(event: InboxEvent, status: InboxStatus, now: datetime, error: str | None = None) -> None:
    event.status = status
    event.processed_at = now
    event.last_error = error
    event.waiting_for = None


def wake_waiting(*, session: Session, keys: set[str] | list[str]) -> list[int]:
    """Return parked events waiting for any of `keys` to `pending`; the caller enqueues them after commit."""
    if not keys:
        return []
    table = InboxEvent.__table__  # Core, not ORM: no session synchronisation needed for rows not loaded
    rows = session.execute(
        update(table)
        .where(table.c.status == InboxStatus.WAITING.value, table.c.waiting_for.in_(sorted(keys)))
        .values(status=InboxStatus.PENDING.value, waiting_for=None)
        .returning(table.c.id)
    ).scalars()
    return sorted(rows)


def requeue_waiting(*, session: Session, older_than: timedelta = timedelta(0), limit: int = 500) -> list[int]:
    """The scheduled retry of parked events (in case what they wait for came by another path)."""
    cutoff = utcnow() - older_than
    ids = session.scalars(
        select(InboxEvent.id)
        .where(InboxEvent.status == InboxStatus.WAITING, InboxEvent.received_at <= cutoff)
        .order_by(InboxEvent.id)
        .limit(limit)
    ).all()
    if ids:
        session.execute(
            update(InboxEvent).where(InboxEvent.id.in_(ids)).values(status=InboxStatus.PENDING, waiting_for=None)
        )
    return list(ids)


def stale_pending(*, session: Session, older_than: timedelta, limit: int = 1000) -> list[int]:
    """Rows that stayed `pending` too long (their message was lost, or sending failed): the sweeper's list."""
    cutoff = utcnow() - older_than
    return list(
        session.scalars(
            select(InboxEvent.id)
            .where(
                InboxEvent.status.in_(RUNNABLE),
                func.coalesce(InboxEvent.enqueued_at, InboxEvent.received_at) <= cutoff,
            )
            .order_by(InboxEvent.id)
            .limit(limit)
        ).all()
    )


def mark_enqueued(*, session: Session, ids: list[int]) -> None:
    if ids:
        session.execute(update(InboxEvent).where(InboxEvent.id.in_(ids)).values(enqueued_at=utcnow()))


class NotReplayable(TaskError):
    """Raised when an admin asks to replay an event that is already processed."""


def replay(*, session: Session, inbox_id: int) -> InboxEvent:
    """Put a failed / waiting / ignored event back to `pending` with a fresh attempt count."""
    event = session.scalar(select(InboxEvent).where(InboxEvent.id == inbox_id).with_for_update())
    if event is None:
        from tasks.errors import NotFound

        raise NotFound(f"no inbox event {inbox_id}")
    if event.status == InboxStatus.PROCESSED:
        raise NotReplayable(f"inbox event {inbox_id} is already processed")
    for column, value in REPLAYED.items():
        setattr(event, column, value)
    return event


# a replayed event starts over: pending, no attempts, waiting for nothing, not processed
REPLAYED = {"status": InboxStatus.PENDING, "attempts": 0, "waiting_for": None, "processed_at": None}


def replay_failed(*, session: Session, ids: list[int]) -> None:
    """Put these failed events back to `pending` in one statement (the bulk replay)."""
    if ids:
        session.execute(update(InboxEvent).where(InboxEvent.id.in_(ids), InboxEvent.status == InboxStatus.FAILED)
                        .values(**REPLAYED))


def list_events(*, session: Session, status: InboxStatus | None = None, limit: int = 50) -> list[InboxEvent]:
    query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    return list(session.scalars(query))


def event_view(event: InboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": event.source.value,
        "event_id": event.event_id,
        "type": event.type,
        "subject": event.subject,
        "status": event.status.value,
        "received_at": event.received_at.isoformat(),
        "processed_at": event.processed_at.isoformat() if event.processed_at else None,
        "attempts": event.attempts,
        "last_error": event.last_error,
        "waiting_for": event.waiting_for,
    }
