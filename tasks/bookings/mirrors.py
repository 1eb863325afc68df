"""Our copies of the platform's students and group classes (`student.upserted`, `class.upserted`).

The platform may deliver upserts late, twice or out of order. Each row remembers the `occurred_at`
of the newest upsert applied (`source_updated_at`); an older upsert changes nothing, so the mirror
always holds the newest state the platform told us, whatever the arrival order. Two upserts of the same
instant apply in the order they arrive (sent in the same second, the later one sent is the newer state).
A class also keeps the time of its newest cancellation (`cancelled_at`), even one a newer upsert had already
replaced: the cancellation ended every booking made before it (see `cancelled_for`).
A row first created as a stub (a booking or a purchase naming an unknown student) has no
`source_updated_at`, so the first real upsert always fills it in.
"""
from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.enums import ClassStatus
from db.models import GroupClass, Student
from tasks.errors import TransientError
from tasks.events import ClassUpserted, StudentUpserted


def _is_stale(row, occurred_at: datetime) -> bool:
    return row.source_updated_at is not None and occurred_at < row.source_updated_at


def _insert_once(session: Session, row) -> bool:
    """Insert `row` unless a concurrent transaction created it first. True when this one inserted."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
        return True
    except IntegrityError:
        return False


def ensure_student(*, session: Session, student_id: str) -> Student:
    """The student's row, created as a stub when first seen (a booking before its `student.upserted`)."""
    student = session.get(Student, student_id)
    if student is None:
        _insert_once(session, Student(id=student_id))
        student = session.get(Student, student_id)
        if student is None:
            raise TransientError(f"student {student_id} could not be created")
    return student


def upsert_student(*, session: Session, data: StudentUpserted, occurred_at: datetime) -> tuple[Student, bool]:
    """Apply a `student.upserted`. Returns (row, applied); an older or repeated upsert is not applied."""
    student = session.scalar(select(Student).where(Student.id == data.student_id).with_for_update())
    if student is None:
        fresh = Student(id=data.student_id, email=data.email, name=data.name, timezone=data.timezone,
                        source_updated_at=occurred_at)
        if _insert_once(session, fresh):
            return fresh, True
        student = session.scalar(select(Student).where(Student.id == data.student_id).with_for_update())
    if _is_stale(student, occurred_at):
        return student, False
    student.email, student.name, student.timezone = data.email, data.name, data.timezone
    student.source_updated_at = occurred_at
    student.erased_at = None  # an update after an erasure: the student is back, with what the platform sent
    return student, True


class ClassUpsert(NamedTuple):
    """What a `class.upserted` did: the row; whether it was applied (an older or repeated upsert is not); and,
    when it changed the class's start, the start it had before (None for a new class or the same start)."""

    group_class: GroupClass
    applied: bool
    moved_from: datetime | None = None


def upsert_class(*, session: Session, data: ClassUpserted, occurred_at: datetime) -> ClassUpsert:
    """Apply a `class.upserted` (see ClassUpsert)."""
    fields = dict(title=data.title, starts_at=data.starts_at, ends_at=data.ends_at, timezone=data.timezone,
                  capacity=data.capacity, seats_taken=data.seats_taken, status=ClassStatus(data.status),
                  source_updated_at=occurred_at)
    cancelling = fields["status"] == ClassStatus.CANCELLED
    group_class = session.scalar(select(GroupClass).where(GroupClass.id == data.class_id).with_for_update())
    if group_class is None:
        fresh = GroupClass(id=data.class_id, **fields, cancelled_at=occurred_at if cancelling else None)
        if _insert_once(session, fresh):
            return ClassUpsert(fresh, True)
        group_class = session.scalar(select(GroupClass).where(GroupClass.id == data.class_id).with_for_update())
    if cancelling and (group_class.cancelled_at is None or group_class.cancelled_at < occurred_at):
        # kept even from a stale upsert: a cancellation ended the bookings made before it, whatever came since
        group_class.cancelled_at = occurred_at
    if _is_stale(group_class, occurred_at):
        return ClassUpsert(group_class, False)
    before = group_class.starts_at
    for name, value in fields.items():
        setattr(group_class, name, value)
    return ClassUpsert(group_class, True, before if before != data.starts_at else None)


def cancelled_for(group_class: GroupClass, at: datetime | None) -> bool:
    """Is the class cancelled for a booking made at `at` (None: now)? Cancelled now, or cancelled after `at` and
    scheduled again since: that cancellation ended the bookings made before it."""
    if group_class.status == ClassStatus.CANCELLED:
        return True
    return at is not None and group_class.cancelled_at is not None and at <= group_class.cancelled_at
