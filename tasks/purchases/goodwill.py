"""Refunds the studio made keeping the student's access (`keep_access`): their amount takes nothing away.

Settling an enrollment (`tasks.purchases.payments.settle_enrollment`) counts refunds for access and
credits net of this amount, so whatever Stripe event reports such a refund (`charge.refunded` with or
without its list of refunds, `refund.created`), in any order, the studio's choice holds. It counts from
the moment it is asked (`pending`), since Stripe's events about it may be handled before Stripe's answer
is recorded, or the answer may be unknown until the call is retried. A kept refund that Stripe refused, or
later reports failed, returned nothing and is no longer netted.
"""
from __future__ import annotations

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from db.models import AdminRefund, PaymentRefund
from tasks.purchases.shapes import REFUND_NOT_COUNTED


def kept_amount(session: Session, enrollment_id: int) -> int:
    # each refund's own record looked up by its key (unique), not every failed refund read
    reported_failed = exists().where(PaymentRefund.refund_key == AdminRefund.stripe_refund_id,
                                     PaymentRefund.status.in_(REFUND_NOT_COUNTED))
    return int(session.scalar(select(func.coalesce(func.sum(AdminRefund.amount), 0)).where(
        AdminRefund.enrollment_id == enrollment_id,
        AdminRefund.keep_access.is_(True),
        AdminRefund.status.in_(("pending", "succeeded")),
        ~reported_failed,
    )))
