"""Helpers for the booking tests: a course world, platform events through the real inbox, a state snapshot."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from db.enums import CreditType, EnrollmentStatus, InboxSource
from db.models import (
    Booking,
    CourseStep,
    InboxEvent,
    OutboxMessage,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from tests import inbox_api as inbox
from tasks.ledger import credits
from tasks.ledger.causes import Cause
from tests import factories

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@dataclass
class World:
    student_id: str
    program_id: int
    enrollment_id: int | None
    step_ids: list[int]  # by position

    def option(self, position: int, n: int = 0, code: str = "SFZ") -> str:
        return f"gc_{code}_{position}_{n}"


def world(database, *, steps=3, status=EnrollmentStatus.ACTIVE, enrolled=True, group_credits=0,
          private_credits=0, classes=True, student_id="stu_1") -> World:
    with database.session_scope() as s:
        student = factories.student(s, id=student_id, email=f"{student_id}@example.test", timezone="Europe/Berlin")
        program = factories.program(s, steps=steps, bundle=())
        enrollment = factories.enrollment(s, student, program, status=status) if enrolled else None
        if classes:
            for position in range(1, steps + 1):
                factories.group_class(s, id=f"gc_SFZ_{position}_0", title=f"Class {position}",
                                      starts_in=timedelta(days=position))
        for credit_type, quantity in ((CreditType.GROUP, group_credits), (CreditType.PRIVATE, private_credits)):
            if quantity:
                credits.issue_credits(session=s, student_id=student.id, credit_type=credit_type, quantity=quantity,
                                      cause=Cause.adjustment(f"test-{credit_type.value}"))
        step_ids = [step.id for step in program.steps]
        return World(student.id, program.id, enrollment.id if enrollment else None, step_ids)


# --------------------------------------------------------------------------- events


def envelope(type_: str, data: dict, *, occurred_at: datetime | None = None, event_id: str | None = None) -> dict:
    return {"id": event_id or f"pev_{uuid.uuid4().hex[:16]}", "type": type_,
            "occurred_at": (occurred_at or T0).isoformat(), "data": data}


def booking_created(booking_id, class_id, *, step_id=None, credit_type=None, student_id="stu_1", when=None, **kw):
    data = {"booking_id": booking_id, "student_id": student_id, "class_id": class_id}
    if step_id is not None:
        data["course_step_id"] = step_id
    if credit_type is not None:
        data["credit_type"] = credit_type
    return envelope("booking.created", data, occurred_at=when or T0, **kw)


def booking_cancelled(booking_id, *, within_policy=True, when=None, **kw):
    when = when or at(30)
    return envelope("booking.cancelled", {"booking_id": booking_id, "cancelled_at": when.isoformat(),
                                          "within_policy": within_policy}, occurred_at=when, **kw)


def attendance(booking_id, outcome="attended", *, when=None, **kw):
    when = when or at(60 * 24 * 5)
    return envelope("attendance.marked", {"booking_id": booking_id, "outcome": outcome,
                                          "marked_at": when.isoformat()}, occurred_at=when, **kw)


def class_upserted(class_id, *, status="scheduled", when=None, title="Class", capacity=10, seats_taken=1,
                   starts_at=None, **kw):
    starts_at = starts_at or T0 + timedelta(days=3)
    return envelope("class.upserted", {"class_id": class_id, "title": title, "starts_at": starts_at.isoformat(),
                                       "ends_at": (starts_at + timedelta(hours=1)).isoformat(),
                                       "capacity": capacity, "seats_taken": seats_taken, "status": status},
                    occurred_at=when or T0, **kw)


def student_upserted(student_id="stu_1", *, email="new@example.test", name="Stu", tz="Europe/Paris", when=None, **kw):
    return envelope("student.upserted", {"student_id": student_id, "email": email, "name": name, "timezone": tz},
                    occurred_at=when or T0, **kw)


def store(database, event: dict) -> int:
    from tasks.events import platform_subject

    with database.session_scope() as s:
        return inbox.store_event(
            session=s, source=InboxSource.PLATFORM, event_id=event["id"], type=event["type"], payload=event,
            subject=platform_subject(event["type"], event["data"]),
            occurred_at=datetime.fromisoformat(event["occurred_at"]),
        ).id


def run(database, inbox_id: int) -> inbox.Result:
    """Process one row, then (as the actor does) whatever it woke."""
    with database.session_scope() as s:
        result = inbox.process_event(session=s, inbox_id=inbox_id)
    for woken in result.woken:
        run(database, woken)
    return result


def deliver(database, event: dict) -> inbox.Result:
    return run(database, store(database, event))


def twin(event: dict) -> dict:
    """The same content under a new event id (the platform sent it twice)."""
    return {**event, "id": f"pev_{uuid.uuid4().hex[:16]}"}


# --------------------------------------------------------------------------- looking


def inbox_row(database, event: dict) -> InboxEvent:
    with database.session_scope() as s:
        row = s.scalar(select(InboxEvent).where(InboxEvent.event_id == event["id"]))
        s.expunge(row)
        return row


def progress(database, w: World, position: int) -> dict:
    with database.session_scope() as s:
        row = s.scalar(select(StudentCourseProgress).where(
            StudentCourseProgress.enrollment_id == w.enrollment_id,
            StudentCourseProgress.step_id == w.step_ids[position - 1]))
        return {c: getattr(row, c) for c in ("status", "booking_id", "group_class_id", "skipped_ahead", "booked_at",
                                             "completed_at", "missed_at", "unbooked_at")}


def booking(database, booking_id) -> Booking | None:
    with database.session_scope() as s:
        row = s.get(Booking, booking_id)
        if row is not None:
            s.expunge(row)
        return row


def enrollment_status(database, w: World) -> str:
    with database.session_scope() as s:
        return s.get(StudentCourseEnrollment, w.enrollment_id).status.value


def outbox_rows(database, topic: str) -> list[OutboxMessage]:
    with database.session_scope() as s:
        rows = list(s.scalars(select(OutboxMessage).where(OutboxMessage.topic == topic).order_by(OutboxMessage.id)))
        for r in rows:
            s.expunge(r)
        return rows


def rejections(database) -> dict[str, str]:
    return {r.payload["data"]["booking_id"]: r.payload["data"]["reason"] for r in outbox_rows(database, "booking.rejected")}


def balances(database, student_id="stu_1") -> dict:
    with database.session_scope() as s:
        return credits.balances(session=s, student_id=student_id, now=T0)


def count(database, model, *where) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def state(database, w: World) -> dict:
    """Everything the booking lifecycle decides, in a comparable shape."""
    with database.session_scope() as s:
        steps = {
            position: (p.status.value, p.booking_id, p.group_class_id)
            for p, position in s.execute(
                select(StudentCourseProgress, CourseStep.position)
                .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
                .where(StudentCourseProgress.enrollment_id == w.enrollment_id))
        }
        statuses = {b.id: b.status.value for b in s.scalars(select(Booking))}
        enrollment = s.get(StudentCourseEnrollment, w.enrollment_id).status.value
        balance = credits.balances(session=s, student_id=w.student_id, now=T0)
    return {"steps": steps, "bookings": statuses, "enrollment": enrollment, "credits": balance}
