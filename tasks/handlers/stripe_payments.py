"""Stripe payment events: checkout fulfilment, refunds and disputes (CONTRACT §3.1).

Each handler reads the event's object and calls one `tasks/` function; the runner owns the
transaction. All events about one payment share the subject `payment:<payment intent>`, so the
runner processes them one at a time, and a refund or dispute parked before its purchase is woken
when the checkout is fulfilled.
"""
from __future__ import annotations

from db.enums import InboxSource
from db.models import InboxEvent
from tasks import disputes, fulfilment, refunds
from tasks.errors import Ignored
from tasks.inbox import handles, provides, settings_of

def _object(event: InboxEvent) -> dict:
    return event.payload["data"]["object"]


@handles(InboxSource.STRIPE, *fulfilment.CHECKOUT_TYPES)
def on_checkout(session, event: InboxEvent) -> None:
    checkout = _object(event)
    if checkout.get("mode") in fulfilment.NOT_ONE_TIME:
        raise Ignored(f"checkout session in {checkout.get('mode')} mode is not a course or package purchase")
    fulfilment.fulfil_checkout(session=session, checkout=checkout, event_type=event.type,
                               event_id=event.event_id, settings=settings_of(session))
    if checkout.get("payment_intent"):
        provides(session, f"payment:{checkout['payment_intent']}")


@handles(InboxSource.STRIPE, "charge.refunded")
def on_charge_refunded(session, event: InboxEvent) -> None:
    refunds.apply_charge_refunded(session=session, charge=_object(event))


@handles(InboxSource.STRIPE, "refund.created", "refund.updated", "charge.refund.updated")
def on_refund(session, event: InboxEvent) -> None:
    refunds.apply_refund(session=session, refund=_object(event))


@handles(InboxSource.STRIPE, "charge.dispute.created")
def on_dispute_created(session, event: InboxEvent) -> None:
    disputes.open_dispute(session=session, dispute=_object(event))


@handles(InboxSource.STRIPE, "charge.dispute.closed")
def on_dispute_closed(session, event: InboxEvent) -> None:
    disputes.close_dispute(session=session, dispute=_object(event))
