"""What admins do with inbox rows: list them, look at one, replay failed, waiting or ignored ones."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.enums import InboxStatus
from db.models import InboxEvent
from tasks.errors import NotFound, TaskError
from tasks.inbox.store import is_pruned
from tasks.machines import INBOX


class NotReplayable(TaskError):
    """Raised when an admin asks to replay an event that is already processed."""


class PayloadPruned(NotReplayable):
    """Raised when an admin asks to replay an event whose payload was pruned: nothing is left to run."""


def replay(*, session: Session, inbox_id: int) -> InboxEvent:
    """Put a failed / waiting / ignored event back to `pending` with a fresh attempt count."""
    event = session.scalar(select(InboxEvent).where(InboxEvent.id == inbox_id).with_for_update())
    if event is None:
        raise NotFound(f"no inbox event {inbox_id}")
    if event.status == InboxStatus.PROCESSED:
        raise NotReplayable(f"inbox event {inbox_id} is already processed")
    if is_pruned(event.payload):
        raise PayloadPruned(f"inbox event {inbox_id} cannot be replayed: its payload was pruned (RETENTION_DAYS, or "
                            f"the student's erasure); ask the sender for it again")
    INBOX.move(event, InboxStatus.PENDING, session=None)  # from failed, waiting or ignored
    for column, value in REPLAYED.items():
        setattr(event, column, value)
    return event


# a replayed event starts over: pending, no attempts, waiting for nothing, not processed
REPLAYED = {"status": InboxStatus.PENDING, "attempts": 0, "waiting_for": None, "processed_at": None}


def replay_failed(*, session: Session, ids: list[int]) -> None:
    """Put these failed events back to `pending` in one statement (the bulk replay); the caller leaves out
    those whose payload was pruned (`is_pruned`)."""
    if ids:
        session.execute(update(InboxEvent).where(InboxEvent.id.in_(ids), InboxEvent.status == InboxStatus.FAILED)
                        .values(**REPLAYED))


def list_events(*, session: Session, status: InboxStatus | None = None, limit: int = 50,
                before: int | None = None) -> list[InboxEvent]:
    """Newest first; `before`: only events with a smaller id (the next page of a list read a page at a time)."""
    query = select(InboxEvent).order_by(InboxEvent.id.desc()).limit(limit)
    if status is not None:
        query = query.where(InboxEvent.status == status)
    if before is not None:
        query = query.where(InboxEvent.id < before)
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
        # retention (RETENTION_DAYS) or a student's erasure pruned it: it can no longer be replayed
        "payload_pruned": is_pruned(event.payload),
    }
