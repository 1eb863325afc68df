"""Stripe payment events: checkout fulfilment, refunds and disputes.

Each handler reads the event's object and calls one service function; the runner owns the
transaction. All events about one payment share the subject `payment:<payment intent>`, so the
runner processes them one at a time, and a refund or dispute parked before its purchase is woken
when the checkout is fulfilled.
"""
from __future__ import annotations

from db.enums import InboxSource
from db.models import InboxEvent
from tasks.errors import Ignored
from tasks.inbox.context import HandlerContext
from tasks.purchases import disputes, fulfilment, refunds
from tasks.purchases.ownership import Ownership


def _object(event: InboxEvent) -> dict:
    return event.payload["data"]["object"]


def on_checkout(ctx: HandlerContext, event: InboxEvent) -> None:
    checkout = _object(event)
    if checkout.get("mode") in fulfilment.NOT_ONE_TIME:
        raise Ignored(f"checkout session in {checkout.get('mode')} mode is not a course or package purchase")
    try:
        fulfilment.fulfil_checkout(session=ctx.session, checkout=checkout, event_type=event.type,
                                   event_id=event.event_id, settings=ctx.settings, fetched=ctx.fetched)
    except fulfilment.SoldNothingOfOurs as exc:  # another sale of the account: not ours (replayable if it was)
        raise Ignored(f"not a course or package of ours: {exc}") from None
    if checkout.get("payment_intent"):
        ctx.provides(f"payment:{checkout['payment_intent']}")


def _ownership(ctx: HandlerContext) -> Ownership:
    """A payment with no purchase of ours: Stripe is asked whose it is (outside the transaction)."""
    return Ownership(settings=ctx.settings, fetched=ctx.fetched)


def on_charge_refunded(ctx: HandlerContext, event: InboxEvent) -> None:
    refunds.apply_charge_refunded(session=ctx.session, charge=_object(event), ownership=_ownership(ctx))


def on_refund(ctx: HandlerContext, event: InboxEvent) -> None:
    refunds.apply_refund(session=ctx.session, refund=_object(event), ownership=_ownership(ctx))


def on_dispute_created(ctx: HandlerContext, event: InboxEvent) -> None:
    disputes.open_dispute(session=ctx.session, dispute=_object(event), ownership=_ownership(ctx))


def on_dispute_closed(ctx: HandlerContext, event: InboxEvent) -> None:
    disputes.close_dispute(session=ctx.session, dispute=_object(event), ownership=_ownership(ctx))


_STRIPE = InboxSource.STRIPE.value
HANDLERS = {
    **{(_STRIPE, type_): on_checkout for type_ in fulfilment.CHECKOUT_TYPES},
    (_STRIPE, "charge.refunded"): on_charge_refunded,
    **{(_STRIPE, type_): on_refund for type_ in ("refund.created", "refund.updated", "charge.refund.updated")},
    (_STRIPE, "charge.dispute.created"): on_dispute_created,
    (_STRIPE, "charge.dispute.closed"): on_dispute_closed,
}
