"""Typed SQLAlchemy 2 models. Invariants live here as constraints, not only in code.

The plan's six tables keep the plan's names (course_program, course_step, course_step_option,
course_bundle_component, student_course_enrollment, student_course_progress). Group classes and
bookings are mirrors of the platform's records: they reference platform ids, so the tables that
point at them hold the id without a foreign key (a step option may name a class that the platform
has not told us about yet).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from db.enums import (
    BookingStatus,
    BundleKind,
    ClassStatus,
    CreditType,
    DisputeStatus,
    EnrollmentStatus,
    InboxSource,
    InboxStatus,
    LedgerEntryType,
    OutboxChannel,
    OutboxStatus,
    ProgramStatus,
    ProgressStatus,
    PublicationStatus,
    PurchaseStatus,
)
from db.types import JSONType, UTCDateTime, enum_column, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A SQLite INTEGER PRIMARY KEY is its rowid; BigInteger keeps PostgreSQL ids 64-bit.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# --------------------------------------------------------------------------- mirrors


class Student(Timestamped, Base):
    """The platform's student, mirrored from `student.upserted` (or first seen on a purchase)."""

    __tablename__ = "student"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # platform student id
    email: Mapped[str | None] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    # occurred_at of the newest upsert applied, so an older event never overwrites a newer state
    source_updated_at: Mapped[datetime | None]


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


# --------------------------------------------------------------------------- catalog


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
    last_error: Mapped[str | None] = mapped_column(Text)


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


# --------------------------------------------------------------------------- purchases


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
    currency: Mapped[str | None] = mapped_column(String(3))
    amount_refunded: Mapped[int] = mapped_column(default=0)
    fulfilment_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    activated_at: Mapped[datetime | None]
    suspended_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]

    progress: Mapped[list["StudentCourseProgress"]] = relationship(viewonly=True)


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


class PackagePurchase(Timestamped, Base):
    __tablename__ = "package_purchase"
    __table_args__ = (Index("ix_package_purchase_payment_intent", "stripe_payment_intent_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    student_id: Mapped[str] = mapped_column(ForeignKey("student.id"), index=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("credit_package.id"))
    status: Mapped[PurchaseStatus] = mapped_column(enum_column(PurchaseStatus, "purchase_status"))
    stripe_checkout_session_id: Mapped[str] = mapped_column(String(255), unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(64))
    amount_total: Mapped[int] = mapped_column(default=0)
    currency: Mapped[str | None] = mapped_column(String(3))
    amount_refunded: Mapped[int] = mapped_column(default=0)


class PaymentRefund(Base):
    """A refund applied to a purchase, keyed by Stripe's refund id (or charge id + amount)."""

    __tablename__ = "payment_refund"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    refund_key: Mapped[str] = mapped_column(String(128), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("student_course_enrollment.id"))
    package_purchase_id: Mapped[int | None] = mapped_column(ForeignKey("package_purchase.id"))
    amount: Mapped[int]
    currency: Mapped[str | None] = mapped_column(String(3))
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    # Stripe's status when last seen; NULL (rows from before it was kept) counts like `succeeded`.
    # `failed` / `canceled` here means the refund failed after it had been counted.
    status: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PaymentDispute(Timestamped, Base):
    __tablename__ = "payment_dispute"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_dispute_id: Mapped[str] = mapped_column(String(64), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(64))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("student_course_enrollment.id"))
    status: Mapped[DisputeStatus] = mapped_column(enum_column(DisputeStatus, "dispute_status"))
    amount: Mapped[int | None]
    reason: Mapped[str | None] = mapped_column(String(64))


class CreditLedgerEntry(Base):
    """Append-only. Balances are sums of `quantity`; nothing is updated or deleted to undo."""

    __tablename__ = "credit_ledger_entry"
    __table_args__ = (
        CheckConstraint(
            "(entry_type = 'grant' AND quantity > 0) OR (entry_type = 'release' AND quantity > 0)"
            " OR (entry_type IN ('consume', 'revoke', 'expire') AND quantity < 0)",
            name="quantity_sign",
        ),
        CheckConstraint("entry_type = 'grant' OR grant_id IS NOT NULL", name="non_grant_has_grant"),
        Index("ix_credit_ledger_entry_student_type", "student_id", "credit_type"),
        Index("ix_credit_ledger_entry_grant_id", "grant_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # entry type + cause + grant lot: the same cause can never count twice
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    student_id: Mapped[str] = mapped_column(ForeignKey("student.id"))
    credit_type: Mapped[CreditType] = mapped_column(enum_column(CreditType, "ledger_credit_type"))
    entry_type: Mapped[LedgerEntryType] = mapped_column(enum_column(LedgerEntryType, "ledger_entry_type"))
    quantity: Mapped[int]
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("credit_ledger_entry.id"))
    cause: Mapped[str] = mapped_column(String(128))  # e.g. enrollment:5, booking:bk_1, refund:re_1
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("student_course_enrollment.id"))
    package_purchase_id: Mapped[int | None] = mapped_column(ForeignKey("package_purchase.id"))
    booking_id: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TransitionLog(Base):
    """Every state transition of an enrollment, progress row, booking or message: the timeline."""

    __tablename__ = "transition_log"
    __table_args__ = (Index("ix_transition_log_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    entity: Mapped[str] = mapped_column(String(32))
    entity_id: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    cause: Mapped[str | None] = mapped_column(String(128))
    enrollment_id: Mapped[int | None] = mapped_column(BigId, index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------- inbox / outbox / logs


class InboxEvent(Base):
    """A verified inbound event, stored once per (source, event id) before it is enqueued."""

    __tablename__ = "inbox_event"
    __table_args__ = (
        UniqueConstraint("source", "event_id"),
        Index("ix_inbox_event_status_received", "status", "received_at"),
        Index("ix_inbox_event_waiting_for", "waiting_for"),
        Index("ix_inbox_event_subject", "subject"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[InboxSource] = mapped_column(enum_column(InboxSource, "inbox_source"))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(128))  # what the event is about, for serialization
    payload: Mapped[dict[str, Any]]
    status: Mapped[InboxStatus] = mapped_column(enum_column(InboxStatus, "inbox_status"), default=InboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    waiting_for: Mapped[str | None] = mapped_column(String(128))
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]


class OutboxMessage(Base):
    """A mail or platform callback to send; written in the same transaction as its cause."""

    __tablename__ = "outbox_message"
    __table_args__ = (
        Index("ix_outbox_message_status_next", "status", "next_attempt_at"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[OutboxChannel] = mapped_column(enum_column(OutboxChannel, "outbox_channel"))
    topic: Mapped[str] = mapped_column(String(64))  # event type or mail template
    recipient: Mapped[str | None] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]]
    status: Mapped[OutboxStatus] = mapped_column(enum_column(OutboxStatus, "outbox_status"), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    enrollment_id: Mapped[int | None] = mapped_column(BigId, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


class AlertLog(Base):
    """An admin alert raised (low seats, dispute, drift); the key makes each crossing alert once."""

    __tablename__ = "alert_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    subject: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReminderLog(Base):
    """One reminder per (enrollment, step, window): never twice."""

    __tablename__ = "reminder_log"
    __table_args__ = (UniqueConstraint("enrollment_id", "step_id", "window_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("student_course_enrollment.id"))
    step_id: Mapped[int] = mapped_column(ForeignKey("course_step.id"))
    window_key: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRun(Base):
    """One row per (job, period): a scheduled job acts at most once per period, whichever process fires."""

    __tablename__ = "job_run"
    __table_args__ = (UniqueConstraint("job", "period_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    period_key: Mapped[str] = mapped_column(String(64))
    runner: Mapped[str | None] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)


# the studio's people and their actions: a module of their own, registered with the rest
from db.models_admin import AdminAccount, AdminApiToken, AdminRefund, AdminSession, AuditEntry, WorkerHeartbeat  # noqa: E402,F401
