"""Storing verified events: one row per (source, event id), durable before the ingress answers.

`store_event` is the ingress's one write (insert ON CONFLICT DO NOTHING); a redelivery returns the first
row's id. On PostgreSQL it runs on the driver connection: SQLAlchemy's statement handling costs as much
as the insert.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, func, literal_column, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from db.database import upsert_insert
from db.enums import InboxSource, InboxStatus
from db.models import ErasedSubject, InboxEvent
from db.types import utcnow


# a payload retention or erasure pruned keeps this key (when), a digest and its facts: nothing left to run
PRUNED = "pruned_at"


def is_pruned(payload: Any) -> bool:
    return isinstance(payload, dict) and PRUNED in payload


def not_pruned(session: Session, payload: Any):
    """SQL: this payload (an inbox event's or a mail's) has not been pruned. On PostgreSQL written as the partial
    indexes state it (`?` with a literal key), so that the planner may use them."""
    if session.get_bind().dialect.name == "postgresql":
        return ~payload.op("?", is_comparison=True)(literal_column(f"'{PRUNED}'"))
    return func.json_extract(payload, f"$.{PRUNED}").is_(None)


def keep_erased_subjects(session: Session, student_id: str, subjects: set[str], at: datetime) -> None:
    """An erased student's subjects, from `at`: retention prunes what ends later about them
    (`tasks.lifecycle.retention.prune_erased`), RETENTION_DAYS long."""
    ordered = sorted(subjects)
    for start in range(0, len(ordered), 300):  # three values a row: well under SQLite's variable limit
        rows = [{"subject": subject, "student_id": student_id, "erased_at": at}
                for subject in ordered[start:start + 300]]
        statement = upsert_insert(session)(ErasedSubject).values(rows)
        session.execute(statement.on_conflict_do_update(
            index_elements=["subject"], set_={"student_id": statement.excluded.student_id,
                                              "erased_at": statement.excluded.erased_at}))


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


def mark_enqueued(*, session: Session, ids: list[int]) -> None:
    """Record that these rows' messages were (re)sent now."""
    if ids:
        session.execute(update(InboxEvent).where(InboxEvent.id.in_(ids)).values(enqueued_at=utcnow()))
