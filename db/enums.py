"""Stored states and kinds. Values are what the database holds and the API shows."""
from __future__ import annotations

import enum


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:  # so f-strings show the value
        return self.value


class ProgramStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"


class ClassStatus(StrEnum):
    SCHEDULED = "scheduled"
    CANCELLED = "cancelled"


class BundleKind(StrEnum):
    PRIVATE_CREDIT = "private_credit"
    GROUP_CREDIT = "group_credit"


class CreditType(StrEnum):
    GROUP = "group"
    PRIVATE = "private"


class EnrollmentStatus(StrEnum):
    PENDING = "pending"  # async payment not settled
    ACTIVE = "active"
    SUSPENDED = "suspended"  # dispute open
    REVOKED = "revoked"
    COMPLETED = "completed"
    FAILED = "failed"  # async payment failed


class ProgressStatus(StrEnum):
    UNBOOKED = "unbooked"
    BOOKED = "booked"
    COMPLETED = "completed"
    MISSED = "missed"
    CANCELLED = "cancelled"  # deactivated by a revocation


class BookingStatus(StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"
    ATTENDED = "attended"
    NO_SHOW = "no_show"
    REJECTED = "rejected"


class PurchaseStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    REFUNDED = "refunded"


class LedgerEntryType(StrEnum):
    GRANT = "grant"
    CONSUME = "consume"
    RELEASE = "release"
    REVOKE = "revoke"
    EXPIRE = "expire"


class InboxSource(StrEnum):
    STRIPE = "stripe"
    PLATFORM = "platform"


class InboxStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    WAITING = "waiting"
    FAILED = "failed"


class OutboxChannel(StrEnum):
    MAIL = "mail"
    PLATFORM = "platform"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"  # failed: an admin's to retry
    # held up past its context's `expires_at` (a reminder once its class started, or moved): not sent, not a failure
    EXPIRED = "expired"


class RefundStatus(StrEnum):
    """Stripe's refund statuses, stored as Stripe says them (`payment_refund.status`)."""

    PENDING = "pending"
    REQUIRES_ACTION = "requires_action"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class DisputeStatus(StrEnum):
    OPEN = "open"
    WON = "won"
    LOST = "lost"


class PublicationStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
