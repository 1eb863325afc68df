"""The chaos suites' history and accounting: a course, a stream of purchases, bookings, cancellations,
attendance and refunds for a set of students with the final state it implies, and the checks that
every acknowledged event is accounted for (none lost, none applied twice, every outbox row delivered).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from db.enums import BundleKind, InboxStatus, OutboxChannel, OutboxStatus, ProgramStatus
from db.models import (
    Booking,
    CourseBundleComponent,
    CourseProgram,
    CourseStep,
    CourseStepOption,
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from tasks.ledger import credits
from tasks.messaging import delivery
from tests.netutil import wait_until
from tests.tasks.purchases.payments_support import charge_refunded, checkout

STUDENTS = 24
STEPS = 3
PRICE = 12000
RECOVERY_TARGET_S = 60
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def envelope(type_: str, data: dict, occurred_at: datetime) -> dict:
    return {"id": f"pev_{uuid.uuid4().hex[:16]}", "type": type_, "occurred_at": occurred_at.isoformat(),
            "data": data}


@dataclass
class Scenario:
    step_ids: list[int]
    phases: list[list[tuple[str, dict]]] = field(default_factory=list)  # (source, event)
    expected: dict = field(default_factory=dict)
    classes: list[tuple[str, dict]] = field(default_factory=list)  # the class mirrors, part of phase 1


def seed(database) -> list[int]:
    with database.session_scope() as s:
        program = CourseProgram(code="CHAOS", title="Chaos course", timezone="UTC", price_amount=PRICE,
                                price_currency="usd", status=ProgramStatus.PUBLISHED)
        s.add(program)
        s.flush()
        ids = []
        for position in range(1, STEPS + 1):
            step = CourseStep(program_id=program.id, position=position, label=f"CHAOS-{position}")
            s.add(step)
            s.flush()
            s.add(CourseStepOption(program_id=program.id, step_id=step.id, group_class_id=f"gc_chaos_{position}"))
            ids.append(step.id)
        s.add(CourseBundleComponent(program_id=program.id, kind=BundleKind.PRIVATE_CREDIT, quantity=2))
        s.add(CourseBundleComponent(program_id=program.id, kind=BundleKind.GROUP_CREDIT, quantity=1))
    return ids


def build(step_ids: list[int], students: range = range(STUDENTS)) -> Scenario:
    """The history of `students`, and the state it implies (see the per-student rules inline)."""
    sc = Scenario(step_ids)
    classes = [("platform", envelope("class.upserted", {
        "class_id": f"gc_chaos_{p}", "title": f"Chaos {p}", "starts_at": (NOW + timedelta(days=3 + p)).isoformat(),
        "ends_at": (NOW + timedelta(days=3 + p, hours=1)).isoformat(), "capacity": 100, "seats_taken": 10,
        "status": "scheduled"}, NOW)) for p in range(1, STEPS + 1)]
    purchases, bookings, outcomes, refunds = [], [], [], []
    for i in students:
        stu, pi = f"stu_chaos_{i}", f"pi_chaos_{i}"
        purchases.append(("stripe", checkout(cs=f"cs_chaos_{i}", pi=pi, student=stu, course="CHAOS", amount=PRICE,
                                             email=f"{stu}@example.test")))
        book = lambda bk, step, when: ("platform", envelope("booking.created", {  # noqa: E731
            "booking_id": bk, "student_id": stu, "class_id": f"gc_chaos_{step}",
            "course_step_id": step_ids[step - 1]}, when))
        bookings.append(book(f"bk_{i}_1", 1, NOW + timedelta(minutes=1)))
        steps = ["booked", "unbooked", "unbooked"]
        private = 2
        if i % 3 == 0:  # books step 2 as well (different steps at once)
            bookings.append(book(f"bk_{i}_2", 2, NOW + timedelta(minutes=2)))
            steps[1] = "booked"
        if i % 4 == 0:  # a private session paid with a bundled credit
            bookings.append(("platform", envelope("booking.created", {
                "booking_id": f"bk_{i}_p", "student_id": stu, "class_id": "private_1", "credit_type": "private"},
                NOW + timedelta(minutes=3))))
            private -= 1
            if i % 8 == 0:  # ... cancelled within policy: the credit comes back
                outcomes.append(("platform", envelope("booking.cancelled", {
                    "booking_id": f"bk_{i}_p", "cancelled_at": (NOW + timedelta(minutes=9)).isoformat(),
                    "within_policy": True}, NOW + timedelta(minutes=9))))
                private += 1
        if i % 3 == 1:  # cancels step 1 within policy: back to unbooked
            outcomes.append(("platform", envelope("booking.cancelled", {
                "booking_id": f"bk_{i}_1", "cancelled_at": (NOW + timedelta(minutes=10)).isoformat(),
                "within_policy": True}, NOW + timedelta(minutes=10))))
            steps[0] = "unbooked"
        elif i % 3 == 2:  # attends step 1
            outcomes.append(("platform", envelope("attendance.marked", {
                "booking_id": f"bk_{i}_1", "outcome": "attended", "marked_at": (NOW + timedelta(days=4)).isoformat()},
                NOW + timedelta(days=4))))
            steps[0] = "completed"
        status = "active"
        # full refund: revoked, open steps cancelled, unconsumed credits gone. Only for students whose
        # step outcome does not depend on whether the refund overtakes their booking (a booking after
        # the refund is refused: the step ends cancelled either way), so any delivery order must end here
        if i % 6 == 0:
            refunds.append(("stripe", charge_refunded(pi=pi, amount=PRICE, refunded=PRICE,
                                                      refunds=((f"re_chaos_{i}", PRICE),), charge=f"ch_chaos_{i}")))
            status = "revoked"
            steps = ["completed" if st == "completed" else "cancelled" for st in steps]
            private = 0
        sc.expected[stu] = {"status": status, "steps": steps,
                            "balances": {"private": private, "group": 0 if status == "revoked" else 1}}
    sc.classes = classes
    sc.phases = [classes + purchases, bookings + outcomes + refunds]
    return sc


def actual(database, student_id: str) -> dict:
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == student_id))
        steps = s.execute(select(StudentCourseProgress.status).join(CourseStep)
                          .where(StudentCourseProgress.enrollment_id == enrollment.id)
                          .order_by(CourseStep.position)).scalars().all()
        return {"status": enrollment.status.value, "steps": [st.value for st in steps],
                "balances": credits.balances(session=s, student_id=student_id)}


def count(database, model, *where) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


# --------------------------------------------------------------------------- the accounting


def open_inbox_rows(database) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(InboxEvent).where(
            InboxEvent.status.in_([InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING])))


def open_rows(database) -> list[tuple]:
    """What is still open, for a failure message."""
    with database.session_scope() as s:
        return [(e.type, e.status.value, e.waiting_for, e.last_error, e.payload.get("data", {}).get("booking_id"))
                for e in s.scalars(select(InboxEvent).where(InboxEvent.status.in_(
                    [InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING])))]


def account(database, *, sent_ids: set[str], expected: dict, bookings: int) -> dict:
    """Every acknowledged event has one inbox row, processed or ignored; every effect exists once; each
    student's state is what the history implies. Answers the inbox's rows by status."""
    students = len(expected)
    with database.session_scope() as s:
        statuses = dict(s.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status)).all())
    assert count(database, InboxEvent) == len(sent_ids), "lost or extra inbox rows"
    with database.session_scope() as s:
        stored = set(s.scalars(select(InboxEvent.event_id)))
        failures = [(e.type, e.event_id, e.last_error) for e in s.scalars(
            select(InboxEvent).where(InboxEvent.status.not_in([InboxStatus.PROCESSED, InboxStatus.IGNORED])))]
    assert stored == sent_ids, f"acknowledged but not stored: {sorted(sent_ids - stored)[:5]}"
    assert not failures, f"unexpected inbox statuses {statuses}: {failures}"
    assert count(database, StudentCourseEnrollment) == students  # one per purchase, none twice
    assert count(database, StudentCourseProgress) == students * STEPS
    assert count(database, CreditLedgerEntry, CreditLedgerEntry.entry_type == "grant") == students * 2
    assert count(database, Booking) == bookings
    mismatches = {stu: (actual(database, stu), want) for stu, want in expected.items()
                  if actual(database, stu) != want}
    assert not mismatches, f"state differs from the history: {mismatches}"
    return {status.value: n for status, n in statuses.items()}


def account_outbound(database, *, receiver, smtp, relay, timeout: float = RECOVERY_TARGET_S) -> dict:
    """Every outbox row sent (`relay()` asks for a relay run), each platform event id received with a valid
    signature, each mail's Message-ID received. Answers the figures, redeliveries included."""
    def drained() -> bool:
        relay()
        return count(database, OutboxMessage, OutboxMessage.status != OutboxStatus.SENT) == 0

    assert wait_until(drained, timeout=timeout, interval=1.0), "outbox did not drain"
    with database.session_scope() as s:
        rows = dict(s.execute(select(OutboxMessage.public_id, OutboxMessage.channel)).all())
    platform_ids = {delivery.event_id(i) for i, channel in rows.items() if channel == OutboxChannel.PLATFORM}
    mail_ids = {delivery.mail_message_id(i) for i, channel in rows.items() if channel == OutboxChannel.MAIL}
    received_ids = [event["id"] for event in receiver.events]
    assert set(received_ids) == platform_ids and not receiver.rejected, "platform events missing or unexpected"
    message_ids = [m["Message-ID"] for m in smtp.messages]
    assert set(message_ids) == mail_ids, "mails missing or unexpected"
    platform_rows, mail_rows = len(platform_ids), len(mail_ids)
    return {"platform": platform_rows, "mail": mail_rows,
            "redelivered": len(received_ids) - len(set(received_ids)) + len(message_ids) - len(set(message_ids))}
