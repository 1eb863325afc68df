"""Parked events: an event that needs another one first waits (`waiting`) until a unit of work provides
what it waits for; the scheduled retry and the sweeper find the rest.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.enums import InboxStatus
from db.models import InboxEvent
from db.types import utcnow

RUNNABLE = (InboxStatus.PENDING, InboxStatus.PROCESSING)


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
