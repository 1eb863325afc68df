"""The catalog: course programs (the plan's course_program, course_step, course_step_option,
course_bundle_component), credit packages, and what was published to Stripe.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.enums import BundleKind, CreditType, ProgramStatus, PublicationStatus
from db.models.base import Base, BigId, Timestamped
from db.types import enum_column, ErrorText, utcnow


class CourseProgram(Timestamped, Base):
    __tablename__ = "course_program"
    __table_args__ = (
        CheckConstraint("price_amount >= 0", name="price_non_negative"),
        Index(
            "uq_course_program_code_live",
            "code",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    marketing_copy: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    price_amount: Mapped[int] = mapped_column(default=0)  # minor units
    price_currency: Mapped[str] = mapped_column(String(3), default="usd")
    status: Mapped[ProgramStatus] = mapped_column(enum_column(ProgramStatus, "program_status"), default=ProgramStatus.DRAFT)
    stripe_product_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_price_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    published_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    steps: Mapped[list["CourseStep"]] = relationship(
        back_populates="program",
        order_by="CourseStep.position",
        primaryjoin="and_(CourseStep.program_id == CourseProgram.id, CourseStep.deleted_at.is_(None))",
        viewonly=True,
    )
    bundle: Mapped[list["CourseBundleComponent"]] = relationship(
        primaryjoin="and_(CourseBundleComponent.program_id == CourseProgram.id, "
        "CourseBundleComponent.deleted_at.is_(None))",
        viewonly=True,
    )


class CourseStep(Timestamped, Base):
    __tablename__ = "course_step"
    __table_args__ = (
        CheckConstraint("position >= 1", name="position_positive"),
        Index(
            "uq_course_step_program_label_live",
            "program_id",
            "label",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "uq_course_step_program_position_live",
            "program_id",
            "position",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("course_program.id"))
    position: Mapped[int]
    label: Mapped[str] = mapped_column(String(64))
    title: Mapped[str | None] = mapped_column(String(200))
    summary: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None]

    program: Mapped[CourseProgram] = relationship(back_populates="steps")
    options: Mapped[list["CourseStepOption"]] = relationship(
        primaryjoin="and_(CourseStepOption.step_id == CourseStep.id, CourseStepOption.deleted_at.is_(None))",
        viewonly=True,
    )


class CourseStepOption(Timestamped, Base):
    """One scheduled group class that can be booked for a step."""

    __tablename__ = "course_step_option"
    __table_args__ = (
        # A class serves one step only within a course.
        Index(
            "uq_course_step_option_program_class_live",
            "program_id",
            "group_class_id",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_course_step_option_group_class_id", "group_class_id"),
        Index("ix_course_step_option_step_id", "step_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("course_program.id"))
    step_id: Mapped[int] = mapped_column(ForeignKey("course_step.id"))
    group_class_id: Mapped[str] = mapped_column(String(64))
    # set while seats are at/under the threshold and admins were alerted; cleared on recovery
    low_seat_alerted_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]


class CourseBundleComponent(Timestamped, Base):
    __tablename__ = "course_bundle_component"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    program_id: Mapped[int] = mapped_column(ForeignKey("course_program.id"))
    kind: Mapped[BundleKind] = mapped_column(enum_column(BundleKind, "bundle_kind"))
    quantity: Mapped[int]
    deleted_at: Mapped[datetime | None]


class CreditPackage(Timestamped, Base):
    __tablename__ = "credit_package"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("price_amount >= 0", name="price_non_negative"),
        Index(
            "uq_credit_package_code_live",
            "code",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    price_amount: Mapped[int] = mapped_column(default=0)
    price_currency: Mapped[str] = mapped_column(String(3), default="usd")
    credit_type: Mapped[CreditType] = mapped_column(enum_column(CreditType, "package_credit_type"))
    quantity: Mapped[int]
    validity_days: Mapped[int | None]  # credits expire this many days after the grant
    stripe_product_id: Mapped[str | None] = mapped_column(String(64))
    stripe_price_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    deleted_at: Mapped[datetime | None]


class StripePublication(Timestamped, Base):
    """Intent → call → outcome for each Stripe object we create, keyed by a deterministic idempotency key."""

    __tablename__ = "stripe_publication"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    program_id: Mapped[int | None] = mapped_column(ForeignKey("course_program.id"))
    package_id: Mapped[int | None] = mapped_column(ForeignKey("credit_package.id"))
    object_type: Mapped[str] = mapped_column(String(16))  # product | price
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[PublicationStatus] = mapped_column(
        enum_column(PublicationStatus, "publication_status"), default=PublicationStatus.PENDING
    )
    stripe_id: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(ErrorText)


class StripeDrift(Base):
    """A difference between what Stripe reports for one of our objects and what we stored."""

    __tablename__ = "stripe_drift"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_object_id: Mapped[str] = mapped_column(String(64), index=True)
    field: Mapped[str] = mapped_column(String(64))
    expected: Mapped[str | None] = mapped_column(Text)
    actual: Mapped[str | None] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(64))
    detected_at: Mapped[datetime] = mapped_column(default=utcnow)
    resolved_at: Mapped[datetime | None]
