"""The credit ledger: append-only; balances are sums.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from db.enums import CreditType, LedgerEntryType
from db.models.base import Base, BigId
from db.types import enum_column, utcnow


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
        # an enrollment's or a package purchase's entries (refunds, the read API, re-provisioning): each holds
        # only the entries that carry its id (an adjustment by hand carries neither)
        Index("ix_credit_ledger_entry_enrollment_id", "enrollment_id",
              postgresql_where=text("enrollment_id IS NOT NULL"), sqlite_where=text("enrollment_id IS NOT NULL")),
        Index("ix_credit_ledger_entry_package_purchase_id", "package_purchase_id",
              postgresql_where=text("package_purchase_id IS NOT NULL"),
              sqlite_where=text("package_purchase_id IS NOT NULL")),
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


class CreditShare(Base):
    """What a partial refund claims of one lot: `target` credits revoked under `cause` in all.

    Kept because a lot spent when the refund came cannot give its share then: a credit that comes back to
    the lot later (a booking cancelled within policy) pays what is still owed, so the end is the same in
    either order. The target only rises (a purchase's refunded total only rises)."""

    __tablename__ = "credit_share"

    grant_id: Mapped[int] = mapped_column(BigId, ForeignKey("credit_ledger_entry.id"), primary_key=True)
    cause: Mapped[str] = mapped_column(String(128), primary_key=True)  # e.g. partial-refund:enrollment:5
    target: Mapped[int]
