"""Whose payment is it: a refund, charge or dispute with no purchase of ours behind it.

Package sales and courses share one Stripe account with the platform's other sales, so a refund or
dispute may be about a payment no course or package of ours was sold by. Without an answer such an
event would wait for a purchase that never comes. When no purchase is found for its payment intent,
`Ownership.check` asks what Stripe says of the payment — its Checkout Session (`GET
/v1/checkout/sessions?payment_intent=…`), else the payment intent's own metadata — through the
handler context's `fetched` (the call runs outside the transaction), and:

- a Checkout Session whose metadata names a course or package (known here yet or not) or whose line items
  sell one of ours, or a checkout event of that payment already in our inbox, or a payment intent whose
  metadata names a course or package: it is ours and the event waits for its purchase (`WaitFor`, as before);
- anything else (no session and no such metadata, a session selling something else, a subscription,
  a payment Stripe does not know in this account): the event ends `ignored` with the reason.

Without STRIPE_API_KEY nothing can be asked: the event waits, and the wait horizon ends it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus
from db.models import InboxEvent
from tasks.errors import Ignored, PermanentError, TransientError
from tasks.events import stripe_id
from tasks.inbox.context import Fetched, not_fetched
from tasks.purchases import fulfilment
from tasks.stripe_api import stripe_client

STRIPE_TIMEOUT_SECONDS = 10


def _stripe_call(what: str, call) -> Any:
    """One Stripe read, its errors classified; a missing object (`resource_missing`) is None."""
    import stripe

    try:
        return call()
    except stripe.InvalidRequestError as exc:
        if getattr(exc, "code", None) == "resource_missing":
            return None
        raise PermanentError(f"Stripe refused {what}: {exc.user_message}") from None
    except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
        raise TransientError(f"Stripe {what}: {exc}") from None
    except stripe.StripeError as exc:  # authentication, permission: retrying will not help
        raise PermanentError(f"Stripe {what}: {exc}") from None


def fetch_sessions_for_payment(settings: Any, payment_intent: str) -> list[dict[str, Any]]:
    client = stripe_client(settings, timeout=STRIPE_TIMEOUT_SECONDS)
    page = _stripe_call(f"checkout sessions of {payment_intent}", lambda: client.v1.checkout.sessions.list(
        params={"payment_intent": payment_intent, "limit": 1}))
    return [s.to_dict(for_json=True) for s in (page.data if page is not None else [])]


def fetch_payment_intent(settings: Any, payment_intent: str) -> dict[str, Any] | None:
    client = stripe_client(settings, timeout=STRIPE_TIMEOUT_SECONDS)
    found = _stripe_call(f"payment intent {payment_intent}",
                         lambda: client.v1.payment_intents.retrieve(payment_intent))
    return found.to_dict(for_json=True) if found is not None else None


def fetch_charge(settings: Any, charge: str) -> dict[str, Any] | None:
    client = stripe_client(settings, timeout=STRIPE_TIMEOUT_SECONDS)
    found = _stripe_call(f"charge {charge}", lambda: client.v1.charges.retrieve(charge))
    return found.to_dict(for_json=True) if found is not None else None


@dataclass
class Ownership:
    """What the refund, dispute and charge handlers ask when a payment has no purchase of ours."""

    settings: Any = None
    fetched: Fetched = not_fetched

    @property
    def can_ask(self) -> bool:
        return bool(getattr(self.settings, "stripe_api_key", None))

    def payment_intent(self, obj: dict[str, Any], what: str) -> str:
        """The payment intent `obj` (a refund, charge or dispute) is about; asked of its charge when the
        event does not say. A payment without a payment intent was not made through Checkout: ignored."""
        pi = stripe_id(obj.get("payment_intent"))
        if pi:
            return pi
        if what == "charge":
            raise Ignored(f"charge {obj.get('id')} has no payment intent: not a Checkout payment, so no course "
                          "or package of ours")
        charge_id = stripe_id(obj.get("charge"))
        if not charge_id or not self.can_ask:
            raise PermanentError(f"{what} {obj.get('id')} has no payment_intent: it cannot be matched to a purchase")
        settings = self.settings
        charge = self.fetched(f"stripe:charge:{charge_id}", lambda: fetch_charge(settings, charge_id))
        pi = stripe_id((charge or {}).get("payment_intent"))
        if not pi:
            raise Ignored(f"{what} {obj.get('id')}: its charge {charge_id} has no payment intent: not a Checkout "
                          "payment, so no course or package of ours")
        return pi

    def check(self, session: Session, payment_intent: str) -> None:
        """No purchase of ours is paid by `payment_intent` (yet): return if one may still come (the caller
        waits), raise Ignored with the reason if Stripe says the payment is not ours."""
        if not self.can_ask or self._checkout_in_inbox(session, payment_intent):
            return
        settings = self.settings
        sessions = self.fetched(f"stripe:checkout_sessions_of:{payment_intent}",
                                lambda: fetch_sessions_for_payment(settings, payment_intent))
        if sessions:
            checkout = sessions[0]
            if checkout.get("mode") in fulfilment.NOT_ONE_TIME:
                raise Ignored(f"payment {payment_intent} is checkout session {checkout.get('id')} in "
                              f"{checkout.get('mode')} mode: not a course or package of ours")
            if fulfilment.names_ours(checkout.get("metadata") or {}):
                # sold as ours, for a course or package perhaps not here yet (imported later, its checkout then
                # replayed): the event waits for the purchase, as it would had the checkout come first
                return
            try:
                fulfilment.identify_product(session, checkout, settings=settings, fetched=self.fetched)
            except fulfilment.UnknownProduct as exc:
                raise Ignored(f"payment {payment_intent} sold no course or package of ours ({exc})") from None
            return
        intent = self.fetched(f"stripe:payment_intent:{payment_intent}",
                              lambda: fetch_payment_intent(settings, payment_intent))
        if intent is None:
            raise Ignored(f"Stripe has no payment intent {payment_intent} in this account: not ours")
        if fulfilment.names_ours(intent.get("metadata") or {}):
            return
        raise Ignored(f"payment {payment_intent} was not made through a Checkout Session and its metadata names "
                      "no course or package: not ours")

    @staticmethod
    def _checkout_in_inbox(session: Session, payment_intent: str) -> bool:
        """A checkout event of this payment is stored that was fulfilled, or that names a course or package of
        ours in its metadata (failed, say, for a course not imported yet): ours. One that failed without such
        metadata (its line items could not be read, say: maybe the account's other sales) or was ignored
        (another mode's, a subscription) proves nothing: Stripe is asked."""
        metadata = InboxEvent.payload["data"]["object"]["metadata"]
        # `fulfilment.names_ours` in SQL: a `kind` of the account's other sales (`membership`) claims nothing
        claims_ours = or_(metadata["kind"].as_string().in_(fulfilment.KINDS),
                          *(metadata[key].as_string() != "" for key in ("course_code", "package_code")))
        return session.scalar(select(InboxEvent.id).where(
            InboxEvent.source == InboxSource.STRIPE, InboxEvent.subject == f"payment:{payment_intent}",
            InboxEvent.type.in_(fulfilment.CHECKOUT_TYPES), InboxEvent.status != InboxStatus.IGNORED,
            or_(InboxEvent.status == InboxStatus.PROCESSED, claims_ours)).limit(1)) is not None
