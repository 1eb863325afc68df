"""POST /webhooks/stripe and POST /webhooks/platform: verify, store once, enqueue after commit, answer."""
from __future__ import annotations

import json
import re

import stripe
from flask import Blueprint, current_app, request

from db.enums import InboxSource
from ingress.errors import ApiError
from ingress.receive import accept_event
from tasks import signatures
from tasks.events import InvalidEvent, UnknownEventType, parse_platform_event, parse_stripe_event, platform_subject
from tasks.inbox import handler_for

bp = Blueprint("webhooks", __name__)

STRIPE_TOLERANCE_SECONDS = 300


def _settings():
    return current_app.config["COURSEPIPE_SETTINGS"]


_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # the JSON escape of a NUL character, not an escaped backslash


def _json_body(raw: bytes):
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "body is not valid JSON") from None
    if b"\\u0000" in raw and _NUL.search(raw):  # PostgreSQL's jsonb holds no NUL character
        raise ApiError(400, "invalid_json", "body contains a NUL character (\\u0000), which cannot be stored")
    return body


@bp.post("/webhooks/stripe")
def stripe_webhook():
    raw = request.get_data(cache=False)
    try:
        text = raw.decode("utf-8")
        # verify_header is what construct_event runs first; we store the raw JSON, not a StripeObject
        stripe.WebhookSignature.verify_header(text, request.headers.get("Stripe-Signature"),
                                              _settings().stripe_webhook_secret, STRIPE_TOLERANCE_SECONDS)
    except (stripe.SignatureVerificationError, ValueError, IndexError, UnicodeDecodeError):
        raise ApiError(400, "invalid_signature", "Stripe-Signature verification failed") from None
    try:
        event, _obj, subject = parse_stripe_event(_json_body(raw))
    except InvalidEvent as exc:
        raise ApiError(400, "invalid_event", f"not a Stripe event we can store: {exc}") from None
    # occurred_at: store_event takes Stripe's `created`
    return accept_event(source=InboxSource.STRIPE, event_id=event["id"], type=event["type"], payload=event,
                        subject=subject, occurred_at=None, raw=text)


@bp.post("/webhooks/platform")
def platform_webhook():
    raw = request.get_data(cache=False)
    try:
        signatures.verify_either(raw, request.headers, _settings().platform_webhook_secret)
    except signatures.SignatureError as exc:
        raise ApiError(400, "invalid_signature", str(exc)) from None
    body = _json_body(raw)
    try:
        envelope, _data = parse_platform_event(body)
    except UnknownEventType as exc:
        if handler_for(InboxSource.PLATFORM.value, exc.envelope.type) is None:
            raise ApiError(400, "unknown_event_type", str(exc)) from None
        envelope = exc.envelope  # a type an extension registered a handler for
    except InvalidEvent as exc:
        raise ApiError(400, "invalid_event", str(exc)) from None
    # stored as received (verified bytes); handlers re-read `data` with the same models
    return accept_event(source=InboxSource.PLATFORM, event_id=envelope.id, type=envelope.type, payload=body,
                        subject=platform_subject(envelope.type, envelope.data), occurred_at=envelope.occurred_at,
                        raw=raw.decode("utf-8"))
