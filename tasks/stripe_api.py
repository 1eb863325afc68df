"""The one place that builds a Stripe client from Settings (key, base address, timeouts).

Tasks take the client as a parameter where they can; this builds the default one.
"""
from __future__ import annotations

from typing import Any

from tasks.errors import PermanentError

STRIPE_TIMEOUT_SECONDS = 20
STRIPE_NETWORK_RETRIES = 1  # one quick retry at most: callers' own backoff handles longer outages


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
                              "max_network_retries": max_network_retries}
    if settings.stripe_api_base:
        kwargs["base_addresses"] = {"api": settings.stripe_api_base}
    return stripe.StripeClient(settings.stripe_api_key, **kwargs)
