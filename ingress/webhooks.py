"""POST /webhooks/stripe and POST /webhooks/platform: verify, store once, enqueue after commit, answer."""
from __future__ import annotations

import time

import stripe
from flask import Blueprint, current_app, request

from db.enums import InboxSource
from ingress.bodies import parse_json, read_body
from ingress.errors import ApiError
from ingress.receive import accept_event
from tasks import signatures
from tasks.events import InvalidEvent, UnknownEventType, parse_platform_event, parse_stripe_event, platform_subject

bp = Blueprint("webhooks", __name__)

STRIPE_TOLERANCE_SECONDS = 300


def _settings():
    return current_app.config["COURSEPIPE_SETTINGS"]


def _check_stripe_header(header: str | None) -> None:
    """What the stripe library leaves open: its own parse takes `t=+1…`, compares non-ASCII v1 values
    with a TypeError, and checks only the age of `t`, not that it is in the past (within tolerance)."""
    if not header:
        return  # the library refuses it, saying so
    times = []
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key == "t":
            if not signatures.TIMESTAMP.fullmatch(value):
                raise stripe.SignatureVerificationError("malformed timestamp", header)
            times.append(int(value))
        elif key == "v1" and not signatures.HEX_SHA256.fullmatch(value):
            raise stripe.SignatureVerificationError("malformed v1 signature", header)
    if times and times[0] > time.time() + STRIPE_TOLERANCE_SECONDS:
        raise stripe.SignatureVerificationError("timestamp in the future, outside the tolerance", header)


@bp.post("/webhooks/stripe")
def stripe_webhook():
    raw = read_body()
    header = request.headers.get("Stripe-Signature")
    try:
        text = raw.decode("utf-8")
        _check_stripe_header(header)
        # verify_header is what construct_event runs first; we store the raw JSON, not a StripeObject
        stripe.WebhookSignature.verify_header(text, header, _settings().stripe_webhook_secret,
                                              STRIPE_TOLERANCE_SECONDS)
    except (stripe.SignatureVerificationError, ValueError, IndexError, UnicodeDecodeError):
        raise ApiError(400, "invalid_signature", "Stripe-Signature verification failed") from None
    body, text = parse_json(raw)
    try:
        event, _obj, subject = parse_stripe_event(body)
    except InvalidEvent as exc:
        raise ApiError(400, "invalid_event", f"not a Stripe event we can store: {exc}") from None
    # occurred_at: store_event takes Stripe's `created`
    return accept_event(source=InboxSource.STRIPE, event_id=event["id"], type=event["type"], payload=event,
                        subject=subject, occurred_at=None, raw=text)


@bp.post("/webhooks/platform")
def platform_webhook():
    raw = read_body()
    try:
        signatures.verify_either(raw, request.headers, _settings().platform_webhook_secret)
    except signatures.SignatureError as exc:
        raise ApiError(400, "invalid_signature", str(exc)) from None
    body, text = parse_json(raw)
    try:
        envelope, _data = parse_platform_event(body)
    except UnknownEventType as exc:
        if (InboxSource.PLATFORM.value, exc.envelope.type) not in current_app.config["COURSEPIPE_RUNTIME"].handlers:
            raise ApiError(400, "unknown_event_type", str(exc)) from None
        envelope = exc.envelope  # a type an extension registered a handler for
    except InvalidEvent as exc:
        raise ApiError(400, "invalid_event", str(exc)) from None
    # stored as received (verified bytes); handlers re-read `data` with the same models
    return accept_event(source=InboxSource.PLATFORM, event_id=envelope.id, type=envelope.type, payload=body,
                        subject=platform_subject(envelope.type, envelope.data), occurred_at=envelope.occurred_at,
                        raw=text)
