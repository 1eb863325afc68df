"""Which of a purchase's Stripe refunds count toward what it had refunded.

A refund counts from the moment Stripe first reports it pending or succeeded, and keeps counting if Stripe
reports it failed or canceled afterwards: what it took back (credits, access) stays taken back, and a later
refund adds to it. A refund whose first word from Stripe is failed or canceled returned nothing and never
counts. Refunds the studio made keeping access are netted against the same total
(`tasks.purchases.goodwill.kept_amount`), on the same rule, so a kept refund's later failure changes nothing.
"""
from __future__ import annotations

from sqlalchemy import ColumnElement, String, cast, exists, or_

from db.models import PaymentRefund, TransitionLog
from tasks.machines import REFUND
from tasks.purchases.shapes import REFUND_NOT_COUNTED


def counted_refund() -> ColumnElement[bool]:
    """A `payment_refund` row that counts: going through, or once going through (its history says so)."""
    once_going = exists().where(TransitionLog.entity == REFUND.entity,
                                TransitionLog.entity_id == cast(PaymentRefund.id, String),
                                TransitionLog.to_status.not_in(REFUND_NOT_COUNTED))
    # a NULL status (a row from before statuses were kept) counts as succeeded
    return or_(PaymentRefund.status.is_(None), PaymentRefund.status.not_in(REFUND_NOT_COUNTED), once_going)
