"""Refunds the studio made keeping the student's access (`keep_access`): their amount takes nothing away.

Settling an enrollment (`tasks.purchases.payments.settle_enrollment`) counts refunds for access and
credits net of this amount, so whatever Stripe event reports such a refund (`charge.refunded` with or
without its list of refunds, `refund.created`), in any order, the studio's choice holds. It counts from
the moment it is asked (`pending`), since Stripe's events about it may be handled before Stripe's answer
is recorded, or the answer may be unknown until the call is retried. A kept refund that Stripe refused, or
whose first word from Stripe is a failure, returned nothing and is no longer netted. One Stripe reports
failed after reporting it going through stays in the stored refunded total, and is netted from that figure
still (`kept_amounts`, the second figure): its failure takes nothing away (`tasks.purchases.counted`, `payments.taken_back`).
"""
from __future__ import annotations

import re

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session

from db.models import AdminRefund, PaymentRefund
from db.types import utcnow
from tasks.purchases.counted import counted_once, going_refund

ADMIN_REFUND_ID = re.compile(r"[0-9]{1,18}")  # an admin refund's row id, as the refund's metadata names it


def kept_amounts(session: Session, enrollment_id: int) -> tuple[int, int]:
    """The kept refunds' amount, asked or made: (going through, going through once), the second as the stored
    refunded total counts them. One read for both."""

    def counted(counts):  # each refund's own record looked up by its key (unique), not every failed refund read
        reported_failed = exists().where(PaymentRefund.refund_key == AdminRefund.stripe_refund_id, ~counts)
        return func.coalesce(func.sum(case((~reported_failed, AdminRefund.amount), else_=0)), 0)

    going, once = session.execute(select(counted(going_refund()), counted(counted_once())).where(
        AdminRefund.enrollment_id == enrollment_id,
        AdminRefund.keep_access.is_(True),
        AdminRefund.status.in_(("pending", "succeeded")),
    )).one()
    return int(going), int(once)


def settle_asked(session: Session, refund: dict, enrollment_id: int | None) -> None:
    """A Stripe refund whose metadata names an admin refund still `pending` (its answer lost, or not recorded
    yet) settles it `succeeded`: it need not stay pending until someone retries. The caller holds the
    purchase's lock (taken before the admin refund's, as `manual.refund_outcome` takes them)."""
    named = (refund.get("metadata") or {}).get("admin_refund_id")
    # an id we wrote: ASCII digits within a row id (metadata edited in Stripe's dashboard may hold anything: "²"
    # is a digit to str.isdigit and not to int, thirty digits overflow the column)
    if enrollment_id is None or not isinstance(named, str) or not ADMIN_REFUND_ID.fullmatch(named) or \
            refund.get("status") not in (None, "succeeded", "pending"):
        return
    row = session.scalar(select(AdminRefund).where(AdminRefund.id == int(named)).with_for_update())
    if row is not None and row.status == "pending" and row.enrollment_id == enrollment_id:
        row.status, row.stripe_refund_id, row.last_error, row.finished_at = "succeeded", refund["id"], None, utcnow()
