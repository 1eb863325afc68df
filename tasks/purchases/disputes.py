"""Disputes: a `payment_dispute` row per Stripe dispute; the purchase is settled from all of them.

`charge.dispute.created` opens the row, drafts its evidence (`tasks.purchases.evidence`) and alerts admins
with the deadline; `charge.dispute.closed` closes it as won
or lost. A closed dispute never reopens, so a `created` that arrives after its `closed` changes
nothing. What open / won / lost mean for the enrollment (suspend / reinstate / revoke) is
`tasks.purchases.payments.settle`. A dispute that arrives before its purchase waits for `payment:<pi>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.enums import DisputeStatus
from db.models import PaymentDispute
from tasks.messaging import outbox
from tasks.purchases import evidence, payments
from tasks.purchases import shapes
from tasks.messaging.outbox import ADMINS
from tasks.errors import PermanentError
from tasks.events import stripe_id
from tasks.machines import DISPUTE

# Stripe's closed statuses: `lost` takes the money back; `won` and `warning_closed` (an inquiry
# that never became a chargeback) leave it with us; `prevented` (a card network's early resolution, such
# as Visa's RDR) took no chargeback: the money went back by a refund, which Stripe reports on its own
LOST_STATUSES = ("lost",)
CLOSED_STATUSES = ("won", "lost", "warning_closed", "prevented")  # Stripe's statuses of a closed dispute


@dataclass
class DisputeApplied:
    dispute_id: str
    dispute_status: str
    purchase_kind: str
    purchase_id: int
    purchase_status: str


def dispute_key(dispute: dict[str, Any]) -> str:
    charge = stripe_id(dispute.get("charge"))
    key = dispute.get("id") or (f"charge:{charge}" if charge else None)
    if not key:
        raise PermanentError("dispute without an id or a charge")
    return key


def _lock_or_create(session: Session, key: str, make) -> tuple[PaymentDispute, bool]:
    query = select(PaymentDispute).where(PaymentDispute.stripe_dispute_id == key).with_for_update()
    row = session.scalar(query)
    if row is not None:
        return row, False
    try:
        with session.begin_nested():
            row = make()
            session.add(row)
        return row, True
    except IntegrityError:
        return session.scalar(query.execution_options(populate_existing=True)), False


def _record(session: Session, dispute: dict[str, Any], status: DisputeStatus,
            ownership: Any = None) -> tuple[payments.Purchase, PaymentDispute]:
    pi = payments.payment_intent_of(dispute, "dispute", ownership)
    purchase = payments.purchase_or_wait(session, pi, ownership)
    row, created = _lock_or_create(session, dispute_key(dispute), lambda: PaymentDispute(
        stripe_dispute_id=dispute_key(dispute),
        stripe_charge_id=stripe_id(dispute.get("charge")),
        stripe_payment_intent_id=pi,
        enrollment_id=purchase.enrollment.id if purchase.enrollment is not None else None,
        status=status,
        amount=dispute.get("amount"),
        reason=dispute.get("reason"),
    ))
    cause = f"dispute:{row.stripe_dispute_id}"
    if created:
        DISPUTE.begin(row, session=session, cause=cause, enrollment_id=row.enrollment_id)
    elif row.status == DisputeStatus.OPEN and status != DisputeStatus.OPEN:
        DISPUTE.move(row, status, session=session, cause=cause, enrollment_id=row.enrollment_id)
    # a `created` arriving after its `closed` changes nothing: a closed dispute never reopens
    session.flush()
    return purchase, row


def _applied(purchase: payments.Purchase, row: PaymentDispute) -> DisputeApplied:
    return DisputeApplied(row.stripe_dispute_id, row.status.value,
                   "course" if purchase.enrollment is not None else "package", purchase.row.id,
                   purchase.row.status.value)


def open_dispute(*, session: Session, dispute: dict[str, Any], ownership: Any = None) -> DisputeApplied:
    """`charge.dispute.created`: suspend the enrollment and alert admins (once per dispute)."""
    shapes.require("dispute", dispute, shapes.dispute_problem(dispute))
    purchase, row = _record(session, dispute, DisputeStatus.OPEN, ownership)
    payments.settle(session=session, purchase=purchase, cause=f"dispute:{row.stripe_dispute_id}")
    if row.status != DisputeStatus.OPEN:  # it came after its `closed`: nothing to answer, no one to alert
        session.flush()
        return _applied(purchase, row)
    evidence.record_opened(session=session, row=row, dispute=dispute)  # the deadline and a first draft
    enrollment = purchase.enrollment
    outbox.add_mail(
        session=session,
        template="dispute_alert",
        recipient=ADMINS,
        context={
            **payments.alert_context(session, purchase),
            "dispute_id": row.stripe_dispute_id,
            "amount": dispute.get("amount"),
            "currency": dispute.get("currency"),
            "reason": dispute.get("reason"),
            "status": dispute.get("status"),
            "evidence_due_by": row.evidence_due_by.isoformat() if row.evidence_due_by else None,
            "evidence_path": f"/admin/disputes/{row.stripe_dispute_id}/evidence",
        },
        dedupe_key=f"dispute_alert:{row.stripe_dispute_id}",
        enrollment_id=enrollment.id if enrollment is not None else None,
    )
    session.flush()
    return _applied(purchase, row)


def close_dispute(*, session: Session, dispute: dict[str, Any], ownership: Any = None) -> DisputeApplied:
    """`charge.dispute.closed`: won → reinstated (unless another dispute is open), lost → revoked."""
    shapes.require("dispute", dispute, shapes.dispute_problem(dispute))
    if dispute.get("status") not in CLOSED_STATUSES:  # an open status here would reinstate the student
        raise PermanentError(f"dispute {dispute.get('id')!r}: closed with status {dispute.get('status')!r}, "
                             f"not one of {', '.join(CLOSED_STATUSES)}")
    status = DisputeStatus.LOST if dispute.get("status") in LOST_STATUSES else DisputeStatus.WON
    purchase, row = _record(session, dispute, status, ownership)
    payments.settle(session=session, purchase=purchase, cause=f"dispute:{row.stripe_dispute_id}:closed")
    session.flush()
    return _applied(purchase, row)
