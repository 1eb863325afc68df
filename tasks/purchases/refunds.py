"""Refunds: record each Stripe refund once, then settle the purchase from all recorded facts.

`charge.refunded` carries the charge's cumulative `amount_refunded` and (in older API versions)
`refunds.data` with each refund's id; `refund.created` / `refund.updated` carry one refund. Each
refund is a `payment_refund` row keyed by its refund id, so the two event kinds never count the
same refund twice, and the purchase's refunded total is the highest of Stripe's cumulative figure
and the sum of distinct refunds. What the total means (full → revoke, partial → proportional
credit revocation) is `tasks.purchases.payments`. A refund that arrives before its purchase waits for
`payment:<payment intent>`, which the fulfilment handler provides.

A refund that Stripe reports `failed` or `canceled` after we counted it returned no money, but what
it took back stays taken back (a revocation is final; the studio may refund the student another
way): the refund's row is marked and the admins get one `refund_failed_alert` mail to decide. An
older `charge.refunded` arriving after the failure, still listing the refund as going through, does
not count it again through the charge's cumulative figure (`_failed_since`); one that lists no
refunds (newer Stripe API versions) cannot be told apart and its figure is taken as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.enums import RefundStatus
from db.models import PaymentRefund
from tasks.messaging import outbox
from tasks.purchases import goodwill, payments
from tasks.purchases import shapes
from tasks.errors import Ignored
from tasks.events import stripe_id
from tasks.machines import REFUND



@dataclass
class RefundApplied:
    purchase_kind: str
    purchase_id: int
    refunded_total: int
    status: str
    recorded: list[str]


COUNTED = "counted"  # a new refund that returned money: it counts from now on
CHANGED = "changed"  # recorded, counting nothing new: first seen failed, failed after counting, or went through


def record_refund(session: Session, purchase: payments.Purchase, refund: dict[str, Any], *, charge_id: str | None,
                  payment_intent: str, purchase_total: int) -> str | None:
    """One `payment_refund` row per Stripe refund id, with Stripe's latest word on it.

    A refund first seen failed / canceled is kept too, so that an older copy arriving late cannot count
    it; a counted one that fails is marked and the admins alerted. Returns `COUNTED`, `CHANGED`, or
    None: a repeat, or an older state arriving late (failed / canceled is final).
    """
    refund_id, amount, status = refund["id"], refund["amount"], refund.get("status")  # shapes.refund_problem checked
    goodwill.settle_asked(session, refund, purchase.enrollment.id if purchase.enrollment is not None else None)
    existing = session.scalar(select(PaymentRefund).where(PaymentRefund.refund_key == refund_id).with_for_update())
    if existing is not None:
        # a NULL status (a row from before statuses were kept) counts as succeeded
        current = RefundStatus(existing.status or RefundStatus.SUCCEEDED)
        target = RefundStatus(status) if status is not None else None
        if target is None or not REFUND.can(current, target) or current == target:
            return None  # a repeat, or an older state arriving late (failed / canceled is final)
        existing.status = current
        REFUND.move(existing, target, session=session, cause=f"refund:{refund_id}", enrollment_id=existing.enrollment_id)
        if target.value in payments.REFUND_NOT_COUNTED:
            _alert_failed(session, purchase, existing, refund)
            return CHANGED
        return CHANGED if target is RefundStatus.SUCCEEDED else None
    row = PaymentRefund(
        refund_key=refund_id,
        status=status,
        stripe_charge_id=stripe_id(refund.get("charge")) or charge_id,
        stripe_payment_intent_id=payment_intent,
        enrollment_id=purchase.enrollment.id if purchase.enrollment is not None else None,
        package_purchase_id=purchase.package_purchase.id if purchase.package_purchase is not None else None,
        amount=amount,
        currency=refund.get("currency"),
        full=purchase_total > 0 and amount >= purchase_total,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:  # the same refund recorded meanwhile by a concurrent event
        return None
    if row.status is not None:
        row.status = RefundStatus(row.status)
        REFUND.begin(row, session=session, cause=f"refund:{refund_id}", enrollment_id=row.enrollment_id)
    return CHANGED if status in payments.REFUND_NOT_COUNTED else COUNTED


def _alert_failed(session: Session, purchase: payments.Purchase, row: PaymentRefund, refund: dict[str, Any]) -> None:
    """One mail to the admins: the refund returned no money, what it took back stays taken back."""
    outbox.add_mail(
        session=session,
        template="refund_failed_alert",
        recipient=outbox.ADMINS,
        context={
            **payments.alert_context(session, purchase),
            "purchase_status": purchase.row.status.value,
            "refund_id": row.refund_key,
            "amount": row.amount,
            "currency": row.currency,
            "status": row.status,
            "failure_reason": refund.get("failure_reason"),
        },
        dedupe_key=f"refund_failed_alert:{row.refund_key}",
        enrollment_id=purchase.enrollment.id if purchase.enrollment is not None else None,
    )


def _failed_since(session: Session, listed: list[dict[str, Any]]) -> int:
    """What an older `charge.refunded` still counts of refunds known to have failed since.

    The charge lists such a refund as pending or succeeded: its cumulative `amount_refunded` (and
    `refunded`) is from before the failure and includes money that never went back. A charge that
    lists the refund as failed is from after it, and Stripe's figure already leaves it out.
    """
    going = {r["id"] for r in listed if r.get("status") not in payments.REFUND_NOT_COUNTED}
    if not going:
        return 0
    return int(session.scalar(select(func.coalesce(func.sum(PaymentRefund.amount), 0)).where(
        PaymentRefund.refund_key.in_(going), PaymentRefund.status.in_(payments.REFUND_NOT_COUNTED))))


def _applied(purchase: payments.Purchase, recorded: list[str]) -> RefundApplied:
    row = purchase.row
    return RefundApplied("course" if purchase.enrollment is not None else "package", row.id, row.amount_refunded,
                   row.status.value, recorded)


def _finish(session: Session, purchase: payments.Purchase, cause: str, recorded: list[str]) -> RefundApplied:
    payments.settle(session=session, purchase=purchase, cause=cause)
    session.flush()
    return _applied(purchase, recorded)


def apply_charge_refunded(*, session: Session, charge: dict[str, Any], ownership: Any = None) -> RefundApplied:
    """`charge.refunded`: record the refunds it lists, raise the refunded total to the charge's own.

    `ownership` (`tasks.purchases.ownership.Ownership`) ends a payment not ours `ignored` instead of waiting."""
    shapes.require("charge", charge, shapes.charge_problem(charge))
    pi = payments.payment_intent_of(charge, "charge", ownership)
    purchase = payments.purchase_or_wait(session, pi, ownership)
    row = purchase.row
    recorded = []
    listed = (charge.get("refunds") or {}).get("data") or []
    for refund in listed:
        if record_refund(session, purchase, refund, charge_id=charge.get("id"), payment_intent=pi,
                         purchase_total=row.amount_total) == COUNTED:
            recorded.append(refund["id"])
    total = int(charge.get("amount_refunded") or 0)
    if charge.get("refunded") is True:  # Stripe's word that the charge is refunded in full
        total = max(total, row.amount_total)
    total -= _failed_since(session, listed)
    row.amount_refunded = max(row.amount_refunded or 0, total)
    return _finish(session, purchase, f"refund:{charge.get('id')}", recorded)


def apply_refund(*, session: Session, refund: dict[str, Any], ownership: Any = None) -> RefundApplied:
    """`refund.created` / `refund.updated`: one refund, keyed by its id."""
    shapes.require("refund", refund, shapes.refund_problem(refund))
    pi = payments.payment_intent_of(refund, "refund", ownership)
    purchase = payments.purchase_or_wait(session, pi, ownership)
    change = record_refund(session, purchase, refund, charge_id=None,
                           payment_intent=pi, purchase_total=purchase.row.amount_total)
    if refund.get("status") in payments.REFUND_NOT_COUNTED:
        if change is None:  # nothing written (Ignored would roll a write back)
            raise Ignored(f"refund {refund.get('id')} is {refund.get('status')}: no money returned")
        return _applied(purchase, [])  # nothing to settle: what a counted refund took back stays taken back
    return _finish(session, purchase, f"refund:{refund.get('id')}", [refund["id"]] if change == COUNTED else [])
