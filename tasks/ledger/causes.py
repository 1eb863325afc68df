"""Why a ledger entry exists, as a type: its cause, and the idempotency keys built from it.

Entries store both as text (`credit_ledger_entry.cause`, `.idempotency_key`); this module is the one
place that writes and reads that text, so no caller builds a key with an f-string or matches a prefix.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from db.enums import CreditType


class CauseKind(str, enum.Enum):
    ENROLLMENT = "enrollment"  # an enrollment's bundle grants: enrollment:<enrollment id>
    PACKAGE_PURCHASE = "package_purchase"  # a credit package's lot: package_purchase:<purchase id>
    BOOKING = "booking"  # a booking spending, releasing or re-revoking a credit: booking:<booking id>
    REVOCATION = "revocation"  # a refund in full or a lost dispute: revocation:<owner>:<id>
    PARTIAL_REFUND = "partial-refund"  # a share of each lot taken back: partial-refund:<owner>:<id>
    ADJUSTMENT = "adjustment"  # credits granted or taken by hand: adjustment:<audit entry id>
    REINSTATEMENT = "reinstatement"  # a revoked bundle given back: reinstatement:enrollment:<id>:<why>
    OTHER = "other"  # a cause this version does not know (read back, never written)


ENROLLMENT_OWNER, PACKAGE_OWNER = "enrollment", "package_purchase"


@dataclass(frozen=True)
class Cause:
    kind: CauseKind
    ref: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.ref}"

    @classmethod
    def parse(cls, text: str | None) -> "Cause":
        kind, _, ref = (text or "").partition(":")
        try:
            return cls(CauseKind(kind), ref)
        except ValueError:
            return cls(CauseKind.OTHER, text or "")

    # ----------------------------------------------------------------- the causes the ledger writes

    @classmethod
    def bundle(cls, enrollment_id: int) -> "Cause":
        return cls(CauseKind.ENROLLMENT, str(enrollment_id))

    @classmethod
    def package(cls, package_purchase_id: int) -> "Cause":
        return cls(CauseKind.PACKAGE_PURCHASE, str(package_purchase_id))

    @classmethod
    def booking(cls, booking_id: str) -> "Cause":
        return cls(CauseKind.BOOKING, str(booking_id))

    @classmethod
    def revocation(cls, owner: str, owner_id: int) -> "Cause":
        return cls(CauseKind.REVOCATION, f"{owner}:{owner_id}")

    @classmethod
    def partial_refund(cls, owner: str, owner_id: int) -> "Cause":
        return cls(CauseKind.PARTIAL_REFUND, f"{owner}:{owner_id}")

    @classmethod
    def adjustment(cls, reference: str) -> "Cause":
        return cls(CauseKind.ADJUSTMENT, str(reference))

    @classmethod
    def reinstatement(cls, enrollment_id: int, why: str) -> "Cause":
        return cls(CauseKind.REINSTATEMENT, f"{ENROLLMENT_OWNER}:{enrollment_id}:{why}")

    @property
    def owner(self) -> tuple[str, int] | None:
        """(owner, id) of a revocation, partial refund or reinstatement; the enrollment of a bundle; the
        package purchase of a package's lot; else None."""
        if self.kind is CauseKind.ENROLLMENT:
            return ENROLLMENT_OWNER, int(self.ref)
        if self.kind is CauseKind.PACKAGE_PURCHASE:
            return PACKAGE_OWNER, int(self.ref)
        if self.kind in (CauseKind.REVOCATION, CauseKind.PARTIAL_REFUND, CauseKind.REINSTATEMENT):
            owner, _, rest = self.ref.partition(":")
            number = rest.split(":", 1)[0]
            return (owner, int(number)) if number.isdigit() else None
        return None


class Keys:
    """The idempotency key of each kind of entry: the same cause never counts twice."""

    @staticmethod
    def grant(cause: Cause, credit_type: CreditType) -> str:
        return f"grant:{cause}:{credit_type.value}"  # one lot per (cause, credit type)

    @staticmethod
    def consume(booking_id: str) -> str:
        return f"consume:booking:{booking_id}"

    @staticmethod
    def release(booking_id: str) -> str:
        return f"release:booking:{booking_id}"

    @staticmethod
    def revoke_release(booking_id: str) -> str:
        return f"revoke:release:{booking_id}"

    @staticmethod
    def consume_again(booking_id: str) -> str:
        return f"consume:again:booking:{booking_id}"

    @staticmethod
    def revoke(cause: Cause, grant_id: int) -> str:
        return f"revoke:{cause}:{grant_id}"

    @staticmethod
    def revoke_again(cause: Cause, grant_id: int, after_entry_id: int) -> str:
        """The same revocation of a lot credits came back to since: after the lot's latest entry."""
        return f"revoke:{cause}:{grant_id}:after:{after_entry_id}"

    @staticmethod
    def revoke_share(cause: Cause, grant_id: int, target: int) -> str:
        """One partial refund's step on one lot: its target share (so two refunds in either order agree)."""
        return f"revoke:{cause}:{grant_id}:{target}"
