"""What ops look at: queue depths, the inbox and outbox backlog, enrollments and their timeline.

Read-only functions taking `*, session` (and, for queues, the broker object itself: it is read
through its public attributes, duck-typed, so this module needs no Dramatiq import). The one
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

DELAY_SUFFIX = ".DQ"
DEAD_SUFFIX = ".XQ"
SEARCH_LIMIT = 50
PROBLEM_LIMIT = 100
TIMELINE_LIMIT = 500


# --------------------------------------------------------------------------- queues


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int  # waiting to be fetched by a worker
    delayed: int  # retries and delayed sends (the queue's .DQ, fetched or not)
    in_flight: int  # fetched by a worker, not yet acknowledged
    dead: int  # dead-lettered (Dramatiq gave up; the inbox row is what gets replayed)

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "ready": self.ready, "delayed": self.delayed,
                "in_flight": self.in_flight, "dead": self.dead}


def queue_depths(broker) -> list[QueueDepth]:
    """Per Dramatiq queue, read from the broker: Redis keys, or the embedded broker's own queues."""
    if hasattr(broker, "client") and hasattr(broker, "namespace"):
        return _redis_depths(broker)
    if hasattr(broker, "dead_letters_by_queue"):
        return _stub_depths(broker)
    return []


def _canonical_queues(names) -> list[str]:
    return sorted({n[: -len(DELAY_SUFFIX)] if n.endswith(DELAY_SUFFIX) else n for n in names})


def _stub_depths(broker) -> list[QueueDepth]:
    depths = []
    for name in _canonical_queues(broker.queues):
        queue = broker.queues.get(name)
        delay_queue = broker.queues.get(name + DELAY_SUFFIX)
        ready = queue.qsize() if queue is not None else 0
        # queue.Queue counts a message until task_done: fetched-but-unfinished ones are in flight
        in_flight = max(queue.unfinished_tasks - ready, 0) if queue is not None else 0
        delayed = delay_queue.unfinished_tasks if delay_queue is not None else 0
        dead = len(broker.dead_letters_by_queue.get(name, ()))
        depths.append(QueueDepth(name, ready, delayed, in_flight, dead))
    return depths


def _redis_depths(broker) -> list[QueueDepth]:
    """Keys as dispatch.lua lays them out: `<ns>:<q>` (list of ids), `<ns>:<q>.DQ`, `<ns>:<q>.XQ` (zset),
    `<ns>:__acks__.<worker id>.<q>` (fetched, unacked) for each worker in `<ns>:__heartbeats__`."""
    client, ns = broker.client, broker.namespace
    queues = _canonical_queues(broker.get_declared_queues())
    workers = [w.decode() if isinstance(w, bytes) else w for w in client.zrange(f"{ns}:__heartbeats__", 0, -1)]
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(f"{ns}:{q}")
        pipe.llen(f"{ns}:{q}{DELAY_SUFFIX}")
        pipe.zcard(f"{ns}:{q}{DEAD_SUFFIX}")
        for w in workers:
            pipe.scard(f"{ns}:__acks__.{w}.{q}")
            pipe.scard(f"{ns}:__acks__.{w}.{q}{DELAY_SUFFIX}")
    values = iter(pipe.execute())
    depths = []
    for q in queues:
        ready, delayed_waiting, dead = next(values), next(values), next(values)
        in_flight = delayed_held = 0
        for _ in workers:
            in_flight += next(values)
            delayed_held += next(values)  # a worker holds delayed messages until their eta
        depths.append(QueueDepth(q, ready, delayed_waiting + delayed_held, in_flight, dead))
    return depths


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
    from tasks import inbox

    query = select(InboxEvent.id).where(InboxEvent.status == InboxStatus.FAILED)
    if type_:
        query = query.where(InboxEvent.type == type_)
    ids = list(session.scalars(query.order_by(InboxEvent.id).limit(limit).with_for_update()))
    inbox.replay_failed(session=session, ids=ids)
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
