"""Enrollments (the plan's student_course_enrollment and student_course_progress) and the transition log
of every state machine.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.enums import EnrollmentStatus, ProgressStatus
from db.models.base import Base, BigId, Timestamped
from db.types import enum_column, utcnow

DELIVERY_MOVES = "entity = 'outbox'"  # an outbox message's moves (tasks.lifecycle.retention)
NOT_DELIVERY = "entity <> 'outbox'"  # every other move: an enrollment's, a step's, a booking's, a payment's


class StudentCourseEnrollment(Timestamped, Base):
    __tablename__ = "student_course_enrollment"
    __table_args__ = (
        Index("ix_student_course_enrollment_student_id", "student_id"),
        Index("ix_student_course_enrollment_payment_intent", "stripe_payment_intent_id"),
        Index("ix_student_course_enrollment_program_status", "program_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    student_id: Mapped[str] = mapped_column(ForeignKey("student.id"))
    program_id: Mapped[int] = mapped_column(ForeignKey("course_program.id"))
    status: Mapped[EnrollmentStatus] = mapped_column(enum_column(EnrollmentStatus, "enrollment_status"))
    stripe_checkout_session_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(64))
    stripe_product_id: Mapped[str | None] = mapped_column(String(64))
    stripe_price_id: Mapped[str | None] = mapped_column(String(64))
    amount_total: Mapped[int] = mapped_column(default=0)
    # Stripe's figures of the checkout: before discounts and (exclusive) tax; the tax (included or added);
    # the discount. Revenue net of tax and discounts is amount_total - amount_tax.
    amount_subtotal: Mapped[int | None]
    amount_tax: Mapped[int] = mapped_column(default=0, server_default="0")
    amount_discount: Mapped[int] = mapped_column(default=0, server_default="0")
    currency: Mapped[str | None] = mapped_column(String(3))
    amount_refunded: Mapped[int] = mapped_column(default=0)
    fulfilment_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    activated_at: Mapped[datetime | None]
    suspended_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    # the `sequence` of the last outbound platform event about this enrollment (tasks.messaging.outbox.next_sequence)
    last_event_sequence: Mapped[int] = mapped_column(default=0, server_default=text("0"))

    progress: Mapped[list["StudentCourseProgress"]] = relationship(viewonly=True)


# a step booked at some point: the course report's `booked`
EVER_BOOKED = (ProgressStatus.BOOKED, ProgressStatus.COMPLETED, ProgressStatus.MISSED)
# the progress rows the course report counts (booked at some point, or booked ahead); the report's query
# uses this same text so that PostgreSQL can answer from the index below alone
COUNTED_PROGRESS = f"status IN ({', '.join(repr(s.value) for s in EVER_BOOKED)}) OR skipped_ahead"


class StudentCourseProgress(Timestamped, Base):
    __tablename__ = "student_course_progress"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_id"),
        # the reminder scan: unbooked rows of the few steps with a class coming up
        Index(
            "ix_student_course_progress_step_unbooked",
            "step_id",
            sqlite_where=text("status = 'unbooked'"),
            postgresql_where=text("status = 'unbooked'"),
        ),
        # the course report's per-step counts: none of a purchase's new (unbooked) rows is in it
        Index(
            "ix_student_course_progress_counted",
            "step_id", "status", "skipped_ahead",
            sqlite_where=text(COUNTED_PROGRESS),
            postgresql_where=text(COUNTED_PROGRESS),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("student_course_enrollment.id"))
    step_id: Mapped[int] = mapped_column(ForeignKey("course_step.id"))
    status: Mapped[ProgressStatus] = mapped_column(
        enum_column(ProgressStatus, "progress_status"), default=ProgressStatus.UNBOOKED
    )
    booking_id: Mapped[str | None] = mapped_column(String(64))
    group_class_id: Mapped[str | None] = mapped_column(String(64))
    skipped_ahead: Mapped[bool] = mapped_column(Boolean, default=False)
    booked_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    missed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    unbooked_at: Mapped[datetime | None]


class TransitionLog(Base):
    """Every state transition of an enrollment, progress row, booking or message: the timeline."""

    __tablename__ = "transition_log"
    __table_args__ = (
        Index("ix_transition_log_entity", "entity", "entity_id"),
        # a message's delivery moves by age: what retention deletes once the message ended
        Index("ix_transition_log_delivery_at", "at", "id", postgresql_where=text(DELIVERY_MOVES),
              sqlite_where=text(DELIVERY_MOVES)),
        # what one event did (the dashboard's event page), without the delivery moves: most of the log
        Index("ix_transition_log_cause", "cause", postgresql_where=text(NOT_DELIVERY), sqlite_where=text(NOT_DELIVERY)),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    cause: Mapped[str | None] = mapped_column(String(128))
    enrollment_id: Mapped[int | None] = mapped_column(BigId, index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
