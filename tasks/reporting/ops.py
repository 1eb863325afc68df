"""What ops look at: the inbox and outbox backlog and the enrollments (queue depths are the broker's:
`workers.queue_depths`; the timeline is `tasks.reporting.timeline`).

Read-only functions taking `*, session`. The one
admin action here (`replay_failed`) changes state but never commits or sends: the caller
commits, then sends the messages that get the rows moving again.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, true
from sqlalchemy.orm import Session

from db.enums import InboxStatus, OutboxChannel, OutboxStatus
from db.models import CourseProgram, InboxEvent, OutboxMessage, StudentCourseEnrollment
from db.types import utcnow
from tasks.inbox import admin as inbox_admin
from tasks.inbox.store import not_pruned

SEARCH_LIMIT = 50
PROBLEM_LIMIT = 100


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
    query = query.where(not_pruned(session, InboxEvent.payload))  # one pruned has nothing left to run
    ids = list(session.scalars(query.order_by(InboxEvent.id).limit(limit).with_for_update()))
    inbox_admin.replay_failed(session=session, ids=ids)
    return ids


def failed_types(*, session: Session) -> dict[str, int]:
    """Failed events by type that the bulk replay would replay (not those whose payload was pruned)."""
    rows = session.execute(
        select(InboxEvent.type, func.count()).where(InboxEvent.status == InboxStatus.FAILED,
                                                    not_pruned(session, InboxEvent.payload))
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
