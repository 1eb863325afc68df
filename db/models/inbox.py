"""The durable inbox: one row per (source, event id).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from db.enums import InboxSource, InboxStatus
from db.models.base import Base, BigId
from db.types import enum_column, ErrorText, utcnow

# ended events (processed, ignored, failed) whose payload retention has still to prune (tasks.lifecycle.retention)
EVENTS_TO_PRUNE = "status IN ('processed', 'ignored', 'failed') AND NOT (payload ? 'pruned_at')"


class InboxEvent(Base):
    """A verified inbound event, stored once per (source, event id) before it is enqueued."""

    __tablename__ = "inbox_event"
    __table_args__ = (
        UniqueConstraint("source", "event_id"),
        Index("ix_inbox_event_status_received", "status", "received_at"),
        Index("ix_inbox_event_waiting_for", "waiting_for"),
        Index("ix_inbox_event_subject", "subject"),
        # retention's batches, oldest first, without reading past what it pruned before (PostgreSQL: partial)
        Index("ix_inbox_event_payload_to_prune", "received_at", "id", postgresql_where=text(EVENTS_TO_PRUNE)),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[InboxSource] = mapped_column(enum_column(InboxSource, "inbox_source"))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(128))  # what the event is about, for serialization
    payload: Mapped[dict[str, Any]]
    status: Mapped[InboxStatus] = mapped_column(enum_column(InboxStatus, "inbox_status"), default=InboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(ErrorText)
    waiting_for: Mapped[str | None] = mapped_column(String(128))
    occurred_at: Mapped[datetime | None]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]


class ErasedSubject(Base):
    """An inbox subject of an erased student (their profile, bookings, payments, the checkouts naming them; the
    payment of a checkout applied while they are erased): an event about it applied or ignored later (one still
    to be applied at the erasure, or one arriving after it) has its payload pruned by the next retention run.
    Kept RETENTION_DAYS after the erasure (after that checkout, for its payment)."""

    __tablename__ = "erased_subject"

    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    student_id: Mapped[str] = mapped_column(String(64))
    erased_at: Mapped[datetime] = mapped_column(index=True)
