"""The outbox, and the memories of alerts and reminders sent.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, UniqueConstraint, literal_column, text
from sqlalchemy.orm import Mapped, mapped_column

from db.enums import OutboxChannel, OutboxStatus
from db.models.base import Base, BigId
from db.types import enum_column, ErrorText, new_public_id, utcnow


PLATFORM_PENDING = "status = 'pending' AND channel = 'platform'"
# ended mails whose body retention has still to prune (tasks.lifecycle.retention; `expired` ones, few, are found
# through the status index)
MAILS_TO_PRUNE = "channel = 'mail' AND status IN ('sent', 'dead') AND NOT (payload ? 'pruned_at')"
# the classes a step reminder lists (its `options`, the class it is about first), searched by containment
# (`@> '[{"class_id": …}]'`) through a GIN index of the reminders still to send: a move of any of them ends those
# (tasks.enrollments.reminders.class_changed); PostgreSQL only (SQLite reads the pending rows through the status
# index); written as PostgreSQL shows it
REMINDER_OPTIONS = "((payload -> 'context'::text) -> 'options'::text)"
STEP_REMINDERS_PENDING = "status = 'pending' AND topic = 'step_reminder'"


class OutboxMessage(Base):
    """A mail or platform callback to send; written in the same transaction as its cause."""

    __tablename__ = "outbox_message"
    __table_args__ = (
        Index("ix_outbox_message_status_next", "status", "next_attempt_at"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("uq_outbox_message_feed_position", "feed_position", unique=True),
        # the platform events GET /v1/events has still to number (mail rows never get a position)
        Index("ix_outbox_message_feed_unassigned", "id",
              sqlite_where=text("channel = 'platform' AND feed_position IS NULL"),
              postgresql_where=text("channel = 'platform' AND feed_position IS NULL")),
        Index("uq_outbox_message_enrollment_sequence", "enrollment_id", "sequence", unique=True,
              sqlite_where=text("sequence IS NOT NULL"), postgresql_where=text("sequence IS NOT NULL")),
        # the relay's claim of platform events: found in order without reading past a backlog of mail
        Index("ix_outbox_message_platform_pending", "next_attempt_at", "id",
              sqlite_where=text(PLATFORM_PENDING), postgresql_where=text(PLATFORM_PENDING)),
        # retention's batches of mail, oldest first, without reading past what it pruned before (PostgreSQL: partial)
        Index("ix_outbox_message_mail_to_prune", "created_at", "id", postgresql_where=text(MAILS_TO_PRUNE)),
        Index("ix_outbox_message_reminder_options", literal_column(REMINDER_OPTIONS).label("reminder_options"),
              postgresql_using="gin", postgresql_ops={"reminder_options": "jsonb_path_ops"},
              postgresql_where=text(STEP_REMINDERS_PENDING)).ddl_if(dialect="postgresql"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # random, made at insert: the outbound event id, the mail Message-ID; unique across installations
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=new_public_id)
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[OutboxChannel] = mapped_column(enum_column(OutboxChannel, "outbox_channel"))
    topic: Mapped[str] = mapped_column(String(64))  # event type or mail template
    recipient: Mapped[str | None] = mapped_column(String(320))
    payload: Mapped[dict[str, Any]]
    status: Mapped[OutboxStatus] = mapped_column(enum_column(OutboxStatus, "outbox_status"), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(ErrorText)
    enrollment_id: Mapped[int | None] = mapped_column(BigId, index=True)
    sequence: Mapped[int | None]  # platform events: strictly increasing per enrollment
    # platform events: the place in GET /v1/events, given after commit (tasks.messaging.event_feed.assign_positions)
    feed_position: Mapped[int | None] = mapped_column(BigInteger)
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
    """One reminder per (enrollment, step, window): never twice. A reminder whose mail expired unsent holds no
    window: its key becomes `expired:<id>` (tasks.enrollments.reminders.forget_expired)."""

    __tablename__ = "reminder_log"
    __table_args__ = (UniqueConstraint("enrollment_id", "step_id", "window_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("student_course_enrollment.id"))
    step_id: Mapped[int] = mapped_column(ForeignKey("course_step.id"))
    window_key: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
