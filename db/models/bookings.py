"""Mirrors of the platform's students and group classes, and the bookings made on them.

They reference platform ids, so the tables that point at them hold the id without a foreign key (a step
option may name a class that the platform has not told us about yet).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from db.enums import BookingStatus, ClassStatus, CreditType
from db.models.base import Base, Timestamped
from db.types import enum_column


class Student(Timestamped, Base):
    """The platform's student, mirrored from `student.upserted` (or first seen on a purchase)."""

    __tablename__ = "student"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # platform student id
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    # occurred_at of the newest upsert applied, so an older event never overwrites a newer state
    source_updated_at: Mapped[datetime | None]
    # when the student's personal data was erased (tasks.lifecycle.erasure): a checkout applied while it is set
    # records no e-mail of its own; a later student.upserted (the student is back) clears it
    erased_at: Mapped[datetime | None]


# a buyer known only by e-mail, and the dashboard's search, match the address case-insensitively
Index("ix_student_email_lower", func.lower(Student.email))


class GroupClass(Timestamped, Base):
    """The platform's group class, mirrored from `class.upserted`."""

    __tablename__ = "group_class"
    __table_args__ = (
        CheckConstraint("capacity >= 0", name="capacity_non_negative"),
        CheckConstraint("seats_taken >= 0", name="seats_taken_non_negative"),
        Index("ix_group_class_starts_at", "starts_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # platform class id
    title: Mapped[str | None] = mapped_column(String(200))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    timezone: Mapped[str | None] = mapped_column(String(64))
    capacity: Mapped[int] = mapped_column(default=0)
    seats_taken: Mapped[int] = mapped_column(default=0)
    status: Mapped[ClassStatus] = mapped_column(enum_column(ClassStatus, "class_status"), default=ClassStatus.SCHEDULED)
    source_updated_at: Mapped[datetime | None]
    # the newest cancellation's time, kept when a newer upsert schedules the class again: it ended the bookings
    # made before it, whatever the order the upserts arrive in
    cancelled_at: Mapped[datetime | None]

    @property
    def seats_left(self) -> int:
        return max(self.capacity - self.seats_taken, 0)


class Booking(Timestamped, Base):
    """A platform booking as we saw it: a course-step booking, a credit booking, or a rejected one."""

    __tablename__ = "booking"
    __table_args__ = (
        # At most one active booking per (enrollment, step): the last word under concurrency.
        Index(
            "uq_booking_active_step",
            "enrollment_id",
            "course_step_id",
            unique=True,
            sqlite_where=text("status = 'active' AND course_step_id IS NOT NULL"),
            postgresql_where=text("status = 'active' AND course_step_id IS NOT NULL"),
        ),
        Index("ix_booking_student_id", "student_id"),
        Index("ix_booking_class_id", "class_id"),
        # an enrollment's bookings, in any status (a booking overtaken by a newer one, revocations, timelines)
        Index("ix_booking_enrollment_step", "enrollment_id", "course_step_id",
              sqlite_where=text("enrollment_id IS NOT NULL"), postgresql_where=text("enrollment_id IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # platform booking id
    student_id: Mapped[str] = mapped_column(ForeignKey("student.id"))
    class_id: Mapped[str] = mapped_column(String(64))
    course_step_id: Mapped[int | None] = mapped_column(ForeignKey("course_step.id"))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("student_course_enrollment.id"))
    credit_type: Mapped[CreditType | None] = mapped_column(enum_column(CreditType, "booking_credit_type"))
    status: Mapped[BookingStatus] = mapped_column(enum_column(BookingStatus, "booking_status"))
    rejection_reason: Mapped[str | None] = mapped_column(String(64))
    booked_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    within_policy: Mapped[bool | None]
    attendance_marked_at: Mapped[datetime | None]
