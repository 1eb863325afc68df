"""Selling for the platform and the WordPress frontend (read token or admin): credit packages on sale,
Checkout Sessions made for a student, and a session's state when the buyer comes back."""
from __future__ import annotations

import re

import stripe
from flask import Blueprint, current_app, jsonify, request

from db.enums import InboxSource
from ingress.bodies import idempotency_key, json_value
from ingress.roles import require_reader
from ingress.errors import ApiError
from tasks.inbox.runner import Outcome
from tasks.inbox.store import store_event
from workers import inbox_runs
from tasks.enrollments.services import AlreadyEnrolled
from tasks.purchases import selling
from tasks.errors import KeyReused, NotFound, ValidationFailed
from tasks.events import stripe_subject
from tasks.purchases.fast_purchase import is_purchase
from tasks.stripe_api import StripeNotConfigured, key_mode, saved_server_error, stripe_client
from workers.actors import enqueue_inbox, send

bp = Blueprint("read_selling", __name__, url_prefix="/v1")

CHECKOUT_SESSION_ID = re.compile(r"^cs_[A-Za-z0-9_]{1,250}$")
IDEMPOTENCY_KEY_MAX = 255


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


def _mode() -> str | None:
    """Stripe's mode of the key (`live` or `test`): what is on sale is what exists there."""
    return key_mode(_runtime().settings.stripe_api_key)


def _stripe():
    try:
        return stripe_client(_runtime().settings, purpose="selling is disabled")
    except StripeNotConfigured as exc:
        raise ApiError(503, "stripe_not_configured", str(exc)) from None


def _stripe_failed(exc: stripe.StripeError) -> ApiError:
    current_app.logger.warning("stripe call failed", extra={"event": {"error": str(exc)}})
    if isinstance(exc, stripe.InvalidRequestError) and getattr(exc, "http_status", None) == 404:
        return ApiError(404, "not_found", "Stripe has no such checkout session")
    return ApiError(502, "stripe_error", f"Stripe did not accept the request: {exc.user_message or exc}")


@bp.get("/packages")
@require_reader
def list_packages():
    with _runtime().db.session_scope() as session:
        listed = selling.published_packages(session, _mode())
        packages = [selling.package_listing(session, p, price)
                    for p, price in zip(listed, selling.price_views(session, listed))]
    return jsonify({"packages": packages})


@bp.get("/packages/<code>")
@require_reader
def get_package(code: str):
    with _runtime().db.session_scope() as session:
        try:
            return jsonify(selling.package_listing(session, selling.sellable_package(session, code, _mode())))
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None


@bp.post("/checkout-sessions")
@require_reader(role="operator")  # a read token, ADMIN_TOKEN, or an operator's personal token
def create_checkout_session():
    key = idempotency_key(IDEMPOTENCY_KEY_MAX)
    try:
        body = json_value()  # strict: no NUL character, lone surrogate or deep nesting reaches the database
    except ApiError as exc:
        if exc.status != 400:
            raise
        raise ApiError(400, "invalid_request", f"body: {exc.message}") from None
    try:
        wanted = selling.parse_checkout_request(body)
    except ValidationFailed as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    client = _stripe()
    round_ = 0
    try:
        with _runtime().db.session_scope() as session:
            if key:
                params, round_ = selling.keyed_checkout_params(session, key, wanted, _mode())
            else:
                params = selling.checkout_params(session=session, request=wanted, mode=_mode())
    except KeyReused as exc:
        raise ApiError(409, "idempotency_key_reused", str(exc)) from None
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except AlreadyEnrolled as exc:
        raise ApiError(409, "already_enrolled", str(exc)) from None
    try:  # outside any transaction
        created = selling.create_checkout_session(params, client=client,
                                                  key=selling.idempotency_key(params, key, round_))
    except stripe.StripeError as exc:
        if not (key and saved_server_error(exc)):
            raise _stripe_failed(exc) from None
        # a failure Stripe keeps under the key: made once more under the key's next round, which the same
        # Idempotency-Key names from now on
        with _runtime().db.session_scope() as session:
            round_ = selling.next_round(session, key, round_)
        try:
            created = selling.create_checkout_session(params, client=client,
                                                      key=selling.idempotency_key(params, key, round_))
        except stripe.StripeError as again:
            raise _stripe_failed(again) from None
    return jsonify(created), 201


@bp.get("/checkout-sessions/<checkout_session_id>")
@require_reader
def get_checkout_session(checkout_session_id: str):
    if not CHECKOUT_SESSION_ID.fullmatch(checkout_session_id):
        raise ApiError(404, "not_found", "not a Checkout Session id")
    client = _stripe()
    try:
        checkout = client.v1.checkout.sessions.retrieve(checkout_session_id).to_dict(for_json=True)
    except stripe.StripeError as exc:
        raise _stripe_failed(exc) from None
    runtime = _runtime()
    with runtime.db.session_scope() as session:
        state = selling.fulfilled(session, checkout_session_id)
    if selling.needs_fulfilment(checkout, state):
        _fulfil_now(runtime, checkout, state)
        with runtime.db.session_scope() as session:
            state = selling.fulfilled(session, checkout_session_id)
    return jsonify({"id": checkout["id"], "status": checkout.get("status"),
                    "payment_status": checkout.get("payment_status"),
                    "enrollment": state["enrollment"], "credits_granted": state["credits_granted"]})


def _fulfil_now(runtime, checkout: dict, state: dict) -> None:
    """Store the return as a Stripe checkout event and run it as a worker runs the webhook's."""
    event = selling.return_event(checkout, state)
    with runtime.db.session_scope() as session:
        stored = store_event(session=session, source=InboxSource.STRIPE, event_id=event["id"],
                             type=event["type"], payload=event,
                             subject=stripe_subject(event["type"], checkout), occurred_at=None)
    result = inbox_runs.run_message(database=runtime.db, inbox_id=stored.id, handlers=runtime.handlers,
                                    settings=runtime.settings,
                                    purchase=is_purchase(InboxSource.STRIPE.value, event["type"], event))
    if result.woken:
        enqueue_inbox(result.woken)
    if result.outcome is Outcome.PROCESSED:
        send("relay_outbox")  # the welcome mail and enrollment.created leave now
    elif result.outcome is Outcome.RETRY:  # a transient failure: the worker tries again with backoff
        enqueue_inbox([stored.id])
