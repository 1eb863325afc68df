"""Helpers to sign bodies the way Stripe and the platform do (the real `stripe` library for Stripe)."""
from __future__ import annotations

import copy
import json
import time
import uuid
from datetime import datetime, timezone

import stripe

from tasks import signatures
from tests.conftest import FIXTURES, PLATFORM_SECRET, WEBHOOK_SECRET


def stripe_fixture(name: str) -> dict:
    return copy.deepcopy(json.loads((FIXTURES / "events" / f"{name}.json").read_text()))


def stripe_headers(body: str, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> dict:
    header = stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


def stripe_event(name: str = "checkout.session.completed", event_id: str | None = None, **object_changes) -> dict:
    event = stripe_fixture(name)
    event["id"] = event_id or f"evt_{uuid.uuid4().hex[:20]}"
    event["created"] = int(time.time())
    event["data"]["object"].update(object_changes)
    return event


def platform_event(type_: str, data: dict, event_id: str | None = None, occurred_at: datetime | None = None) -> dict:
    return {
        "id": event_id or f"pev_{uuid.uuid4().hex[:16]}",
        "type": type_,
        "occurred_at": (occurred_at or datetime.now(timezone.utc)).isoformat(),
        "data": data,
    }


def platform_headers(body: bytes, secret: str = PLATFORM_SECRET, timestamp: int | None = None) -> dict:
    return {"Platform-Signature": signatures.sign(body, secret, timestamp), "Content-Type": "application/json"}
