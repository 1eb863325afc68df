"""Platform event signatures, both directions, in two schemes with one shared secret:

- `Platform-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`;
- Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
  "<id>.<timestamp>.<body>">`), made and checked by the `standardwebhooks` package.

Both use the UTF-8 bytes of PLATFORM_WEBHOOK_SECRET as the HMAC key. A Standard Webhooks library that
wants a `whsec_…` secret is given `"whsec_" + base64(PLATFORM_WEBHOOK_SECRET)` (`standard_secret`).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from datetime import datetime, timezone
from typing import Mapping

from standardwebhooks import Webhook, WebhookVerificationError

DEFAULT_TOLERANCE_SECONDS = 300

# a Unix time written as Python's str(int) writes it (no sign, no leading zero, no `_`); 12 digits
# reach the year 33658, so a longer value is never a time
TIMESTAMP = re.compile(r"(?:0|[1-9][0-9]{0,11})")
HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")  # either case: hex digits are hex digits


class SignatureError(ValueError):
    """Raised when a signature header is missing, garbled, wrong or stale."""


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(body: bytes, header: str | None, secret: str, *, tolerance: int = DEFAULT_TOLERANCE_SECONDS,
           now: float | None = None) -> int:
    """Check the header against the body; several v1 values are allowed (secret rotation)."""
    if not header:
        raise SignatureError("missing Platform-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    garbled = False
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not TIMESTAMP.fullmatch(value):
                raise SignatureError("malformed timestamp in Platform-Signature")
            timestamp = int(value)
        elif key == "v1":
            if HEX_SHA256.fullmatch(value):
                candidates.append(value.lower())
            else:  # cannot match: not compared
                garbled = True
    if timestamp is None:
        raise SignatureError("Platform-Signature needs t=<unix seconds>")
    if not candidates:
        raise SignatureError("Platform-Signature v1 must be 64 hexadecimal characters (the HMAC-SHA256)" if garbled
                             else "Platform-Signature needs at least one v1=")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError("Platform-Signature timestamp outside the tolerance")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no Platform-Signature v1 value matches")
    return timestamp


STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def standard_secret(secret: str) -> str:
    """PLATFORM_WEBHOOK_SECRET in the `whsec_<base64 key>` form Standard Webhooks libraries take."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def standard_headers(body: bytes, *, message_id: str, secret: str, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for one outbound request."""
    t = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(secret.encode()).sign(message_id, datetime.fromtimestamp(t, tz=timezone.utc), body.decode())
    return {"webhook-id": message_id, "webhook-timestamp": str(t), "webhook-signature": signature}


def verify_standard(body: bytes, headers: Mapping[str, str], secret: str) -> None:
    """Check Standard Webhooks headers (5-minute tolerance, several signatures allowed)."""
    try:
        Webhook(secret.encode()).verify(body, {k: headers.get(k) or "" for k in STANDARD_HEADERS}, json_parse=False)
    except WebhookVerificationError as exc:
        raise SignatureError(f"webhook-signature: {exc}") from None
    except (ValueError, TypeError):  # a garbled header or body (binascii and Unicode errors are ValueErrors)
        raise SignatureError("webhook-signature: malformed header") from None


def verify_either(body: bytes, headers: Mapping[str, str], secret: str) -> str:
    """Accept a request signed in either scheme; returns the scheme that matched."""
    if headers.get("Platform-Signature"):
        try:
            verify(body, headers.get("Platform-Signature"), secret)
            return "platform"
        except SignatureError:
            if not headers.get("webhook-signature"):
                raise
    if headers.get("webhook-signature"):
        verify_standard(body, headers, secret)
        return "standard-webhooks"
    raise SignatureError("missing Platform-Signature (or Standard Webhooks webhook-signature) header")
