"""Payment facts: package purchases, and each Stripe refund and dispute recorded once.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.enums import DisputeStatus, PurchaseStatus
from db.models.base import Base, BigId, Timestamped
from db.types import JSONType, enum_column, utcnow


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
    # Stripe's figures of the checkout: before discounts and (exclusive) tax; the tax (included or added);
    # the discount. Revenue net of tax and discounts is amount_total - amount_tax.
    amount_subtotal: Mapped[int | None]
    amount_tax: Mapped[int] = mapped_column(default=0, server_default="0")
    amount_discount: Mapped[int] = mapped_column(default=0, server_default="0")
    currency: Mapped[str | None] = mapped_column(String(3))
    amount_refunded: Mapped[int] = mapped_column(default=0)
    # what it sold, recorded when the purchase is made ({credit_type, quantity, validity_days}): an edit of the
    # package afterwards reaches new purchases only (NULL: made before it was recorded, the package as it is)
    sold: Mapped[dict[str, Any] | None]


class PaymentRefund(Base):
    """A refund applied to a purchase, keyed by Stripe's refund id (or charge id + amount)."""

    __tablename__ = "payment_refund"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    refund_key: Mapped[str] = mapped_column(String(128), unique=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(64), index=True)
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("student_course_enrollment.id"), index=True)
    package_purchase_id: Mapped[int | None] = mapped_column(ForeignKey("package_purchase.id"), index=True)
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
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("student_course_enrollment.id"), index=True)
    status: Mapped[DisputeStatus] = mapped_column(enum_column(DisputeStatus, "dispute_status"))
    amount: Mapped[int | None]
    reason: Mapped[str | None] = mapped_column(String(64))
    currency: Mapped[str | None] = mapped_column(String(3))
    stripe_status: Mapped[str | None] = mapped_column(String(32))  # Stripe's own word (needs_response, …)
    # the evidence answering it: drafted when it opens, submitted to Stripe by an admin before the deadline
    evidence_due_by: Mapped[datetime | None]
    evidence: Mapped[dict[str, Any] | None]
    evidence_status: Mapped[str | None] = mapped_column(String(16))  # draft | submitting | submitted | failed
    evidence_submission_key: Mapped[str | None] = mapped_column(String(100))
    evidence_requested_at: Mapped[datetime | None]
    evidence_submitted_at: Mapped[datetime | None]
    evidence_files: Mapped[dict[str, Any] | None]  # evidence field -> Stripe file id uploaded for it
    evidence_error: Mapped[str | None] = mapped_column(Text)


class CheckoutKey(Base):
    """A caller's Idempotency-Key for `POST /v1/checkout-sessions`, bound to the request it first came with: the
    same key with another request is refused (as Stripe refuses its own keys), and with the same request sends
    Stripe the request built the first time, for as long as Stripe keeps its keys (24 hours; the retention job
    prunes older ones)."""

    __tablename__ = "checkout_key"
    __table_args__ = (Index("ix_checkout_key_created_at", "created_at"),)

    request_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_digest: Mapped[str] = mapped_column(String(64))  # sha256 of the request, as parsed
    # the Stripe request its first use built, sent again on a repeat (NULL: bound before it was kept)
    stripe_request: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # the round of the Stripe key it sends: raised when Stripe keeps a failure under the key (`selling.next_round`)
    stripe_key_round: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
