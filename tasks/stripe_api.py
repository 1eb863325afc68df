"""The one place that builds a Stripe client from Settings (key, base address, timeouts, API version).

Tasks take the client as a parameter where they can; this builds the default one. Every call names
`STRIPE_API_VERSION`: a Stripe dashboard upgrade of the account's default version changes nothing
here (the webhook endpoint names its own version; `coursepipe doctor` checks it is this one).
"""
from __future__ import annotations

import functools
from typing import Any

from tasks.errors import Ignored, PermanentError

# The Stripe API version of every call we make and of the webhook endpoint's payloads (the version
# the installed `stripe` library models). Changing it is a deliberate upgrade: docs/runbook.md.
STRIPE_API_VERSION = "2026-10-28.endive"
STRIPE_TIMEOUT_SECONDS = 20
STRIPE_NETWORK_RETRIES = 1  # one quick retry at most: callers' own backoff handles longer outages


def saved_server_error(exc: Exception) -> bool:
    """A 5xx Stripe saved under the call's idempotency key and replays (`Idempotent-Replayed: true`): the error
    came once the call had begun, and every retry with that key answers it again for 24 hours, so the key can
    never make the call; only a fresh key can, once it is known whether the first one made the object."""
    if (getattr(exc, "http_status", None) or 0) < 500:
        return False
    headers = getattr(exc, "headers", None) or {}
    return any(k.lower() == "idempotent-replayed" and str(v).lower() == "true" for k, v in headers.items())


def outcome_unknown(exc: Exception) -> bool:
    """A Stripe error that is no refusal: Stripe down or unreachable, rate limited, a 5xx, or a concurrent
    request with the same idempotency key (409). What was asked may or may not have been done: worth asking
    again (with the same key), never reported as Stripe's judgement."""
    import stripe

    if isinstance(exc, (stripe.APIConnectionError, stripe.RateLimitError)):
        return True
    status = getattr(exc, "http_status", None)
    return status is None or status >= 500 or status == 409


class StripeNotConfigured(PermanentError):
    """Raised when a Stripe call is needed but STRIPE_API_KEY is not set."""

    def __init__(self, purpose: str | None = None) -> None:
        super().__init__("STRIPE_API_KEY is not set" + (f": {purpose}" if purpose else ""))


def stripe_client(settings: Any, *, purpose: str | None = None,
                  timeout: float = STRIPE_TIMEOUT_SECONDS, max_network_retries: int = STRIPE_NETWORK_RETRIES):
    """A `stripe.StripeClient` for `settings.stripe_api_key`, at `settings.stripe_api_base` when set.

    `purpose` completes the error message when the key is missing ("publishing is disabled")."""
    import stripe

    if settings is None or not settings.stripe_api_key:
        raise StripeNotConfigured(purpose)
    kwargs: dict[str, Any] = {"http_client": stripe.RequestsClient(timeout=timeout),
                              "max_network_retries": max_network_retries, "stripe_version": STRIPE_API_VERSION}
    if settings.stripe_api_base:
        kwargs["base_addresses"] = {"api": settings.stripe_api_base, "files": settings.stripe_api_base}
    return stripe.StripeClient(settings.stripe_api_key, **kwargs)


LIVE_PREFIXES = ("sk_live_", "rk_live_")
TEST_PREFIXES = ("sk_test_", "rk_test_")


def key_mode(api_key: str | None) -> str | None:
    """`live` or `test` from a secret or restricted key's prefix; None when unset or not a Stripe key."""
    if not api_key:
        return None
    if api_key.startswith(LIVE_PREFIXES):
        return "live"
    if api_key.startswith(TEST_PREFIXES):
        return "test"
    return None


def mode_mismatch(settings: Any, payload: dict[str, Any]) -> str | None:
    """Why a Stripe event is not for this installation's mode, or None.

    An event whose `livemode` differs from the key's (`sk_live_` / `sk_test_`) is another mode's: a
    shared endpoint, or a Connect platform, sends test events to live endpoints and back. Without a
    key there is no mode to hold it against.
    """
    mode = key_mode(getattr(settings, "stripe_api_key", None))
    livemode = payload.get("livemode")
    if mode is None or not isinstance(livemode, bool) or livemode == (mode == "live"):
        return None
    return (f"livemode mismatch: a {'live' if livemode else 'test'}-mode event, "
            f"and STRIPE_API_KEY is a {mode}-mode key")


def mode_guarded(handler):
    """A Stripe event handler that first ends another mode's event `ignored`, with the reason."""

    @functools.wraps(handler)
    def guarded(ctx, event):
        reason = mode_mismatch(ctx.settings, event.payload)
        if reason:
            raise Ignored(reason)
        return handler(ctx, event)

    return guarded
