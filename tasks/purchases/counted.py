"""Which of a purchase's Stripe refunds count, and for what.

- **Going through**: Stripe's latest word on the refund is pending or succeeded (or, for rows from before
  statuses were kept, nothing). The sum of these is what the student has back now.
- **Counted once**: going through, or going through once and failed or canceled since. The purchase's stored
  refunded total keeps the highest figure ever reached, so it holds these: what such a refund took back
  (credits, access) stays taken back.

A refund whose first word from Stripe is failed or canceled returned nothing and is neither. Refunds the studio
made keeping access are netted against each figure on its own rule (`tasks.purchases.goodwill.kept_amounts`,
`tasks.purchases.payments.taken_back`).
"""
from __future__ import annotations

from sqlalchemy import ColumnElement, String, cast, exists, or_

from db.models import PaymentRefund, TransitionLog
from tasks.machines import REFUND
from tasks.purchases.shapes import REFUND_NOT_COUNTED


def going_refund() -> ColumnElement[bool]:
    """A `payment_refund` row going through (a NULL status, from before statuses were kept, counts as succeeded)."""
    return or_(PaymentRefund.status.is_(None), PaymentRefund.status.not_in(REFUND_NOT_COUNTED))


def counted_once() -> ColumnElement[bool]:
    """A `payment_refund` row going through, or once going through (its history says so)."""
    once_going = exists().where(TransitionLog.entity == REFUND.entity,
                                TransitionLog.entity_id == cast(PaymentRefund.id, String),
                                TransitionLog.to_status.not_in(REFUND_NOT_COUNTED))
    return or_(going_refund(), once_going)
