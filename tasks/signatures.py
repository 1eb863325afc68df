"""The `Platform-Signature` scheme, both directions: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">."""
from __future__ import annotations

import hashlib
import hmac
import re
import time

DEFAULT_TOLERANCE_SECONDS = 300

# a Unix time written as Python's str(int) writes it (no sign, no leading zero, no `_`); 12 digits
# reach the year 33658, so a longer value is never a time
TIMESTAMP = re.compile(r"(?:0|[1-9][0-9]{0,11})")
HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if not TIMESTAMP.fullmatch(value):
                raise SignatureError("malformed timestamp in Platform-Signature")
            timestamp = int(value)
        elif key == "v1" and HEX_SHA256.fullmatch(value):  # anything else cannot match: not compared
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("Platform-Signature needs t= and at least one v1=")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance:
        raise SignatureError("Platform-Signature timestamp outside the tolerance")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no Platform-Signature v1 value matches")
    return timestamp
