"""Test events for platform developers: one correctly signed platform or Stripe event, built from an
example and the caller's `--data`, posted to a running instance (`coursepipe simulate TYPE`)."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from tasks import signatures
from tasks.stripe_api import STRIPE_API_VERSION


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _sim_id(prefix: str) -> str:
    return f"{prefix}_sim_{uuid.uuid4().hex[:16]}"


# The examples share their objects' ids (`bk_sim`, `pi_sim`, `ch_sim`, `dp_sim`): a follow-up sent by default (a
# cancel, an attendance, a refund, a dispute) finds what the example before it made. Event and Checkout Session
# ids are new each time; a second booking or purchase names its own ids with --data.
def _platform_examples() -> dict[str, dict[str, Any]]:
    now = _now()
    return {
        "student.upserted": {"student_id": "stu_sim", "email": "sim@example.test", "name": "Sim Student",
                             "timezone": "UTC"},
        "class.upserted": {"class_id": "gc_sim", "title": "Simulated class",
                           "starts_at": (now + timedelta(days=7)).isoformat(),
                           "ends_at": (now + timedelta(days=7, hours=1)).isoformat(),
                           "capacity": 10, "seats_taken": 0, "status": "scheduled"},
        "booking.created": {"booking_id": "bk_sim", "student_id": "stu_sim", "class_id": "gc_sim"},
        "booking.cancelled": {"booking_id": "bk_sim", "cancelled_at": now.isoformat(), "within_policy": True},
        "attendance.marked": {"booking_id": "bk_sim", "outcome": "attended", "marked_at": now.isoformat()},
    }


def _checkout(paid: bool) -> dict[str, Any]:
    return {"id": _sim_id("cs_test"), "object": "checkout.session", "mode": "payment",
            "status": "complete", "payment_status": "paid" if paid else "unpaid",
            "client_reference_id": "stu_sim", "metadata": {"kind": "course", "course_code": "SFZ"},
            "payment_intent": "pi_sim", "amount_total": 12000, "currency": "eur",
            "customer_details": {"email": "sim@example.test", "name": "Sim Student"}, "livemode": False}


def _charge() -> dict[str, Any]:
    return {"id": "ch_sim", "object": "charge", "payment_intent": "pi_sim", "amount": 12000,
            "amount_refunded": 12000, "refunded": True, "currency": "eur", "livemode": False,
            "refunds": {"object": "list", "data": [{"id": _sim_id("re"), "object": "refund", "amount": 12000,
                                                   "status": "succeeded", "payment_intent": "pi_sim"}]}}


def _dispute(status: str) -> dict[str, Any]:
    return {"id": "dp_sim", "object": "dispute", "charge": "ch_sim", "payment_intent": "pi_sim", "amount": 12000,
            "currency": "eur", "status": status, "livemode": False}


STRIPE_EXAMPLES = {
    "checkout.session.completed": lambda: _checkout(paid=True),
    "checkout.session.async_payment_succeeded": lambda: _checkout(paid=True),
    "checkout.session.async_payment_failed": lambda: _checkout(paid=False),
    "charge.refunded": _charge,
    "charge.dispute.created": lambda: _dispute("needs_response"),
    "charge.dispute.closed": lambda: _dispute("won"),
}


def types() -> tuple[list[str], list[str]]:
    return sorted(_platform_examples()), sorted(STRIPE_EXAMPLES)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build(type_: str, data: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """("platform" | "stripe", the event) for TYPE with `data` merged over the example."""
    data = data or {}
    platform = _platform_examples()
    if type_ in platform:
        return "platform", {"id": _sim_id("pev"), "type": type_, "occurred_at": _now().isoformat(),
                            "data": _merge(platform[type_], data)}
    if type_ in STRIPE_EXAMPLES:
        obj = _merge(STRIPE_EXAMPLES[type_](), data)
        return "stripe", {"id": _sim_id("evt"), "object": "event", "api_version": STRIPE_API_VERSION,
                          "created": int(time.time()), "livemode": False, "type": type_,
                          "data": {"object": obj}}
    platform_types, stripe_types = types()
    raise ValueError(f"unknown type {type_!r}; platform: {', '.join(platform_types)}; "
                     f"stripe: {', '.join(stripe_types)}")


def stripe_signature(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's scheme: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the whole whsec_ secret>."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def send(*, url: str, source: str, event: dict[str, Any], settings, timeout: float = 15) -> tuple[int, str]:
    """POST the event to `url`/webhooks/<source>, signed; returns (HTTP status, body)."""
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "coursepipe-simulate/1"}
    if source == "platform":
        headers["Platform-Signature"] = signatures.sign(body, settings.platform_webhook_secret)
    else:
        headers["Stripe-Signature"] = stripe_signature(body, settings.stripe_webhook_secret)
    request = urllib.request.Request(f"{url.rstrip('/')}/webhooks/{source}", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
