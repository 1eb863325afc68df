"""What ops look at: the inbox and outbox backlog, enrollments and their timeline (queue depths are
the broker's: `workers.queue_depths`).

Read-only functions taking `*, session`. The one
admin action here (`replay_failed`) changes state but never commits or sends: the caller
commits, then sends the messages that get the rows moving again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, true
from sqlalchemy.orm import Session

from db.enums import InboxStatus, OutboxChannel, OutboxStatus
from db.models import (
    Booking,
    CourseProgram,
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    StudentCourseEnrollment,
    TransitionLog,
)
from db.types import utcnow
from tasks.inbox import admin as inbox_admin

SEARCH_LIMIT = 50
PROBLEM_LIMIT = 100
TIMELINE_LIMIT = 500


# --------------------------------------------------------------------------- inbox and outbox


# Open statuses are counted exactly (a range of the (status, …) index: cost grows with the backlog,
# not with history); final ones (processed, ignored, sent) only within a recent window, or by counters.
OPEN_INBOX = (InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING, InboxStatus.FAILED)
OPEN_OUTBOX = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.DEAD)
RECENT = timedelta(hours=24)


@dataclass(frozen=True)
class InboxSummary:
    by_status: dict[str, int]  # the open statuses
    oldest_pending_at: datetime | None
    oldest_pending_age_seconds: float | None
    processed_recently: int | None = None  # processed in the last RECENT (when asked for)


def inbox_summary(*, session: Session, now: datetime | None = None, recent: bool = False) -> InboxSummary:
    now = now or utcnow()
    rows = session.execute(
        select(InboxEvent.status, func.count()).where(InboxEvent.status.in_(OPEN_INBOX)).group_by(InboxEvent.status)
    ).all()
    by_status = {s.value: 0 for s in OPEN_INBOX}
    by_status.update({status.value: n for status, n in rows})
    oldest = session.scalar(
        select(InboxEvent.received_at)
        .where(InboxEvent.status.in_((InboxStatus.PENDING, InboxStatus.PROCESSING)))
        .order_by(InboxEvent.received_at)
        .limit(1)
    )
    age = max((now - oldest).total_seconds(), 0.0) if oldest is not None else None
    processed = None
    if recent:
        processed = session.scalar(select(func.count()).select_from(InboxEvent).where(
            InboxEvent.status == InboxStatus.PROCESSED, InboxEvent.received_at >= now - RECENT))
    return InboxSummary(by_status, oldest, age, processed)


def problem_events(*, session: Session, limit: int = PROBLEM_LIMIT) -> list[InboxEvent]:
    """Failed and waiting events (with their error), newest first: the ones an admin may replay."""
    return list(session.scalars(
        select(InboxEvent)
        .where(InboxEvent.status.in_((InboxStatus.FAILED, InboxStatus.WAITING)))
        .order_by(InboxEvent.id.desc())
        .limit(limit)
    ))


def outbox_summary(*, session: Session) -> dict[str, dict[str, int]]:
    """Outbox rows in an open status (pending, sending, dead) by channel; deliveries are counted by the relay."""
    out: dict[str, dict[str, int]] = {c.value: {s.value: 0 for s in OPEN_OUTBOX} for c in OutboxChannel}
    for channel, status, n in session.execute(
        select(OutboxMessage.channel, OutboxMessage.status, func.count())
        .where(OutboxMessage.status.in_(OPEN_OUTBOX))
        .group_by(OutboxMessage.channel, OutboxMessage.status)
    ):
        out[channel.value][status.value] = n
    return out


def outbox_retrying(*, session: Session) -> dict[str, int]:
    """Pending messages that failed at least once (waiting for their next attempt), by channel."""
    rows = session.execute(
        select(OutboxMessage.channel, func.count())
        .where(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.last_error.is_not(None))
        .group_by(OutboxMessage.channel)
    ).all()
    return {channel.value: n for channel, n in rows}


def dead_messages(*, session: Session, limit: int = PROBLEM_LIMIT) -> list[OutboxMessage]:
    return list(session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.DEAD)
        .order_by(OutboxMessage.id.desc())
        .limit(limit)
    ))


BULK_REPLAY_LIMIT = 500


def replay_failed(*, session: Session, type_: str | None = None, limit: int = BULK_REPLAY_LIMIT) -> list[int]:
    """Every failed event (of one type, if given), oldest first, back to `pending`: after a fix is deployed.
    The caller sends them after commit; handlers are idempotent, so a second press is harmless."""
    query = select(InboxEvent.id).where(InboxEvent.status == InboxStatus.FAILED)
    if type_:
        query = query.where(InboxEvent.type == type_)
    ids = list(session.scalars(query.order_by(InboxEvent.id).limit(limit).with_for_update()))
    inbox_admin.replay_failed(session=session, ids=ids)
    return ids


def failed_types(*, session: Session) -> dict[str, int]:
    """Failed events by type (for the bulk replay's choice)."""
    rows = session.execute(
        select(InboxEvent.type, func.count()).where(InboxEvent.status == InboxStatus.FAILED)
        .group_by(InboxEvent.type).order_by(InboxEvent.type)
    ).all()
    return {t: n for t, n in rows}


# --------------------------------------------------------------------------- enrollments


def search_enrollments(*, session: Session, query: str, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
    """By student id, checkout session id, payment intent id or enrollment id (exact), newest first."""
    query = (query or "").strip()
    if not query:
        conditions = [true()]
    else:
        conditions = [
            StudentCourseEnrollment.student_id == query,
            StudentCourseEnrollment.stripe_checkout_session_id == query,
            StudentCourseEnrollment.stripe_payment_intent_id == query,
        ]
        if query.isascii() and query.isdigit() and len(query) <= 18:  # an id a BIGINT holds ("²" is a digit too)
            conditions.append(StudentCourseEnrollment.id == int(query))
    rows = session.execute(
        select(StudentCourseEnrollment, CourseProgram.code)
        .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
        .where(or_(*conditions))
        .order_by(StudentCourseEnrollment.id.desc())
        .limit(limit)
    ).all()
    return [enrollment_row(e, code) for e, code in rows]


def enrollment_row(enrollment: StudentCourseEnrollment, course_code: str) -> dict[str, Any]:
    return {
        "id": enrollment.id,
        "student_id": enrollment.student_id,
        "course_code": course_code,
        "status": enrollment.status.value,
        "checkout_session_id": enrollment.stripe_checkout_session_id,
        "payment_intent_id": enrollment.stripe_payment_intent_id,
        "amount_total": enrollment.amount_total,
        "amount_refunded": enrollment.amount_refunded,
        "currency": enrollment.currency,
        "created_at": enrollment.created_at,
    }


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # transition | event | outbox | credit
    what: str
    detail: str = ""
    ref: dict[str, Any] = field(default_factory=dict)


def enrollment_timeline(*, session: Session, enrollment_id: int, limit: int = TIMELINE_LIMIT) -> list[TimelineEntry]:
    """Everything that touched one enrollment, oldest first: state transitions (its own, its steps',
    its bookings', its messages'), the inbox events about its payment and bookings, its outbox rows,
    and its bundle's ledger entries."""
    enrollment = session.get(StudentCourseEnrollment, enrollment_id)
    if enrollment is None:
        return []
    entries: list[TimelineEntry] = []
    for t in session.scalars(
        select(TransitionLog).where(TransitionLog.enrollment_id == enrollment_id).order_by(TransitionLog.id).limit(limit)
    ):
        entries.append(TimelineEntry(
            t.at, "transition", f"{t.entity} {t.entity_id}: {t.from_status or '∅'} → {t.to_status}", t.cause or "",
            {"entity": t.entity, "entity_id": t.entity_id},
        ))

    booking_ids = list(session.scalars(select(Booking.id).where(Booking.enrollment_id == enrollment_id)))
    subjects = {f"payment:{enrollment.stripe_checkout_session_id}"}
    if enrollment.stripe_payment_intent_id:
        subjects.add(f"payment:{enrollment.stripe_payment_intent_id}")
    subjects.update(f"booking:{b}" for b in booking_ids)
    events = list(session.scalars(
        select(InboxEvent).where(InboxEvent.subject.in_(sorted(subjects))).order_by(InboxEvent.id).limit(limit)
    ))
    if booking_ids:  # booking.created is keyed on the student; keep the ones naming this enrollment's bookings
        wanted = set(booking_ids)
        for event in session.scalars(
            select(InboxEvent).where(InboxEvent.subject == f"student:{enrollment.student_id}",
                                     InboxEvent.type == "booking.created").order_by(InboxEvent.id).limit(limit)
        ):
            if ((event.payload or {}).get("data") or {}).get("booking_id") in wanted:
                events.append(event)
    for e in events:
        entries.append(TimelineEntry(
            e.received_at, "event", f"{e.source.value} {e.type} ({e.status.value})",
            e.last_error or e.event_id, {"inbox_id": e.id, "event_id": e.event_id, "status": e.status.value},
        ))
    for m in session.scalars(
        select(OutboxMessage).where(OutboxMessage.enrollment_id == enrollment_id).order_by(OutboxMessage.id).limit(limit)
    ):
        entries.append(TimelineEntry(
            m.created_at, "outbox", f"{m.channel.value} {m.topic} ({m.status.value}, {m.attempts} attempt(s))",
            m.last_error or (m.recipient or ""), {"outbox_id": m.id, "status": m.status.value},
        ))
    for c in session.scalars(
        select(CreditLedgerEntry).where(CreditLedgerEntry.enrollment_id == enrollment_id)
        .order_by(CreditLedgerEntry.id).limit(limit)
    ):
        entries.append(TimelineEntry(
            c.created_at, "credit", f"{c.entry_type.value} {c.quantity:+d} {c.credit_type.value}", c.cause,
            {"ledger_id": c.id},
        ))
    entries.sort(key=lambda entry: (entry.at, entry.kind))
    return entries
