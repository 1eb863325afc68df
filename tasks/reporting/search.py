"""One search for any id an admin may hold: checkout session, payment intent, charge, refund, dispute,
student id or e-mail, event id, booking id, inbox / enrollment / outbox row number — across the inbox,
enrollments, students and the outbox. And the pending events with their age.

Exact matches on the indexed columns first; an id that appears only inside payloads (a charge, a refund,
a dispute, a checkout session of a failed event) is found by a text search of the payloads, which is
bounded (at least PAYLOAD_MIN characters, at most `limit` rows of each kind, newest first).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, func, or_, select
from sqlalchemy.orm import Session

from db.enums import InboxStatus
from db.models import InboxEvent, OutboxMessage, Student
from db.types import utcnow
from tasks.reporting import ops

PAYLOAD_MIN = 6
LIMIT = 50
SUBJECT_KINDS = ("payment", "student", "booking", "class", "checkout", "dispute", "charge", "refund")


def _event_view(event: InboxEvent, now: datetime) -> dict[str, Any]:
    return {"id": event.id, "source": event.source.value, "event_id": event.event_id, "type": event.type,
            "subject": event.subject, "status": event.status.value, "attempts": event.attempts,
            "last_error": event.last_error, "waiting_for": event.waiting_for, "received_at": event.received_at,
            "age_seconds": max((now - event.received_at).total_seconds(), 0.0)}


def _outbox_view(message: OutboxMessage) -> dict[str, Any]:
    return {"id": message.id, "channel": message.channel.value, "topic": message.topic,
            "recipient": message.recipient, "status": message.status.value, "attempts": message.attempts,
            "last_error": message.last_error, "created_at": message.created_at, "enrollment_id": message.enrollment_id}


def find(*, session: Session, query: str, limit: int = LIMIT, now: datetime | None = None) -> dict[str, Any]:
    q = (query or "").strip()
    now = now or utcnow()
    if not q:
        return {"query": q, "events": [], "enrollments": [], "students": [], "outbox": []}
    number = int(q) if q.isascii() and q.isdigit() and len(q) <= 18 else None  # an id a BIGINT holds
    deep = len(q) >= PAYLOAD_MIN

    students = list(session.scalars(select(Student).where(
        or_(Student.id == q, func.lower(Student.email) == q.lower())).limit(limit)))
    student_ids = [s.id for s in students]

    subjects = [f"{kind}:{q}" for kind in SUBJECT_KINDS] + [f"student:{s}" for s in student_ids]
    event_match = [InboxEvent.event_id == q, InboxEvent.subject.in_(subjects)]
    if number is not None:
        event_match.append(InboxEvent.id == number)
    if deep:
        event_match.append(cast(InboxEvent.payload, String).contains(q, autoescape=True))
    events = list(session.scalars(select(InboxEvent).where(or_(*event_match))
                                  .order_by(InboxEvent.id.desc()).limit(limit)))

    enrollments = ops.search_enrollments(session=session, query=q, limit=limit)
    seen = {e["id"] for e in enrollments}
    # a payment intent or checkout found in an event leads to its enrollment; a student's e-mail to theirs
    for key in {e.subject.split(":", 1)[1] for e in events if e.subject and e.subject.startswith("payment:")} \
            | set(student_ids):
        for row in ops.search_enrollments(session=session, query=key, limit=limit):
            if row["id"] not in seen:
                seen.add(row["id"])
                enrollments.append(row)

    outbox_match = [OutboxMessage.recipient == q, OutboxMessage.dedupe_key.contains(q, autoescape=True)]
    if number is not None:
        outbox_match += [OutboxMessage.id == number, OutboxMessage.enrollment_id == number]
    if seen:
        outbox_match.append(OutboxMessage.enrollment_id.in_(seen))
    if deep:
        outbox_match.append(cast(OutboxMessage.payload, String).contains(q, autoescape=True))
    outbox = list(session.scalars(select(OutboxMessage).where(or_(*outbox_match))
                                  .order_by(OutboxMessage.id.desc()).limit(limit)))
    return {
        "query": q,
        "events": [_event_view(e, now) for e in events],
        "enrollments": enrollments[:limit],
        "students": [{"id": s.id, "email": s.email, "name": s.name} for s in students],
        "outbox": [_outbox_view(m) for m in outbox],
    }


def pending_events(*, session: Session, limit: int = LIMIT, now: datetime | None = None) -> list[dict[str, Any]]:
    """Events not applied yet (pending, processing), oldest first, with their age."""
    now = now or utcnow()
    return [_event_view(e, now) for e in session.scalars(
        select(InboxEvent).where(InboxEvent.status.in_((InboxStatus.PENDING, InboxStatus.PROCESSING)))
        .order_by(InboxEvent.received_at, InboxEvent.id).limit(limit))]
