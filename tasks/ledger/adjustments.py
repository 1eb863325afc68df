"""Manual credit adjustments, through the ledger (append-only): a positive one grants a lot (with an
optional expiry), a negative one revokes from the student's usable lots, soonest-expiring first.

The cause is `adjustment:<audit entry id>`, so the statement can say who did it and why, and the same
adjustment can never count twice.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import CreditType
from db.models import CreditLedgerEntry
from db.types import utcnow
from tasks.errors import NotFound, PermanentError, ValidationFailed
from tasks.ledger import credits

MAX_ADJUSTMENT = 1000


class NotEnoughCredit(PermanentError):
    """Raised when a negative adjustment asks for more than the student's usable balance of that kind."""


def parse_kind(value) -> CreditType:
    try:
        return CreditType(value)
    except ValueError:
        raise ValidationFailed(f"kind: must be one of {', '.join(t.value for t in CreditType)}", field="kind") from None


def parse_quantity(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value == 0 or abs(value) > MAX_ADJUSTMENT:
        raise ValidationFailed(f"quantity: a non-zero integer between -{MAX_ADJUSTMENT} and {MAX_ADJUSTMENT}",
                               field="quantity")
    return value


def adjust(*, session: Session, student_id: str, credit_type: CreditType, quantity: int, cause: str,
           expires_at: datetime | None = None, now: datetime | None = None) -> list[CreditLedgerEntry]:
    now = now or utcnow()
    student = credits.lock_student(session, student_id)
    if student is None:
        raise NotFound(f"no student {student_id}")
    if quantity > 0:
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed("expires_at: must be in the future", field="expires_at")
        return [credits.issue_credits(session=session, student_id=student_id, credit_type=credit_type,
                                      quantity=quantity, cause=cause, expires_at=expires_at)]
    if expires_at is not None:
        raise ValidationFailed("expires_at: only a positive adjustment grants credits that expire", field="expires_at")
    usable = [lot for lot in credits.lots(session=session, student_id=student_id, credit_type=credit_type)
              if lot.remaining > 0 and (lot.grant.expires_at is None or lot.grant.expires_at > now)]
    wanted = -quantity
    if sum(lot.remaining for lot in usable) < wanted:
        raise NotEnoughCredit(f"student {student_id} has {sum(lot.remaining for lot in usable)} usable "
                              f"{credit_type.value} credit(s); cannot take {wanted}")
    entries = []
    for lot in usable:
        if wanted <= 0:
            break
        entry = credits.revoke_from_lot(session=session, grant=lot.grant, quantity=min(wanted, lot.remaining),
                                        key=f"{cause}:{lot.grant.id}", cause=cause)
        if entry is not None:
            entries.append(entry)
            wanted += entry.quantity
    return entries


def made_by(*, session: Session, student_id: str, credit_type: CreditType, cause: str) -> list[CreditLedgerEntry]:
    """The ledger entries an adjustment made (its cause), in order (read through the student's index)."""
    return list(session.scalars(select(CreditLedgerEntry).where(
        CreditLedgerEntry.student_id == student_id, CreditLedgerEntry.credit_type == credit_type,
        CreditLedgerEntry.cause == cause).order_by(CreditLedgerEntry.id)))


def entry_view(entry: CreditLedgerEntry) -> dict:
    return {"id": entry.id, "kind": entry.credit_type.value, "entry_type": entry.entry_type.value,
            "quantity": entry.quantity, "cause": entry.cause,
            "expires_at": entry.expires_at.isoformat() if entry.expires_at else None}
