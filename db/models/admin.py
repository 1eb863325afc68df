"""Models of the studio's own people and actions: admin accounts, their sessions and API tokens, the
audit log, refunds the studio asked Stripe for, and worker heartbeats.

Imported (and re-exported) by `db.models`, so importing `db.models` registers them on `Base.metadata`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, String, Text, CheckConstraint
from sqlalchemy.orm import Mapped, mapped_column

from db.models.base import Base, BigId
from db.types import ErrorText, utcnow


class AdminAccount(Base):
    """One person who runs the studio: `owner`, `operator` or `viewer`; the password is an argon2 hash."""

    __tablename__ = "admin_account"
    __table_args__ = (CheckConstraint("role IN ('owner', 'operator', 'viewer')", name="role_known"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-cased
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class AdminSession(Base):
    """A dashboard login, held on the server: the cookie carries a random token whose hash is `token_hash`.

    Logout revokes it; it ends at `expires_at` whatever happens. A break-glass login (ADMIN_TOKEN) has no
    account and keeps a fingerprint of the token, so rotating ADMIN_TOKEN ends it.
    """

    __tablename__ = "admin_session"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admin_account.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    credential_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class AdminApiToken(Base):
    """A personal API token (bearer), shown once; only its hash is kept. It acts with its owner's role."""

    __tablename__ = "admin_api_token"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admin_account.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """Who did what, when and why: one row per admin action, written in the action's own transaction."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_target", "target"), Index("ix_audit_log_at", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))  # an admin's e-mail, "ADMIN_TOKEN", or "cli:<user>"
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))  # e.g. event.replay, enrollment.refund
    target: Mapped[str | None] = mapped_column(String(128))  # e.g. enrollment:5, inbox_event:42
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AdminRefund(Base):
    """A refund the studio asked Stripe for: intent → call → outcome, each committed on its own.

    `keep_access` is the studio's choice, which settling the enrollment honours when Stripe's refund
    events arrive: the amount of a refund kept this way takes nothing away.
    """

    __tablename__ = "admin_refund"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("student_course_enrollment.id"), index=True)
    amount: Mapped[int]
    currency: Mapped[str | None] = mapped_column(String(3))
    keep_access: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(320))
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)  # sent to Stripe
    request_key: Mapped[str | None] = mapped_column(String(128), unique=True)  # the caller's Idempotency-Key
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | succeeded | failed
    stripe_refund_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    last_error: Mapped[str | None] = mapped_column(ErrorText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class WorkerHeartbeat(Base):
    """The last sign of life of each worker process (written by the worker, read by the dashboard)."""

    __tablename__ = "worker_heartbeat"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # host:pid
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(default=utcnow)
