"""Bearer tokens (constant-time compare): reading the header, and the shared tokens of the settings.

ADMIN_TOKEN opens everything; a read token (READ_API_TOKEN, several for rotation) opens `GET /v1/…`
and `POST /v1/checkout-sessions` only and is refused (403 `forbidden`) everywhere else, so the
WordPress frontend never holds a credential that can change the catalog. Who may call which route —
personal tokens and roles included — is `ingress.roles`.
"""
from __future__ import annotations

import hmac

from flask import current_app, request

from ingress.errors import ApiError

READ_WRITE_ROUTES = frozenset({("POST", "/v1/checkout-sessions")})  # what a read token may POST


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str | None, *expected: str | None) -> bool:
    if not token:
        return False
    ok = False
    for candidate in expected:
        if candidate:
            ok |= hmac.compare_digest(token.encode(), candidate.encode())
    return ok


def _settings():
    return current_app.config["COURSEPIPE_SETTINGS"]


def is_read_token(token: str | None) -> bool:
    return _matches(token, *_settings().read_api_tokens)


def read_token_allowed(method: str, path: str) -> bool:
    """Where a read token is accepted: `GET /v1/…` (and HEAD) and `POST /v1/checkout-sessions`."""
    if method in ("GET", "HEAD") and path.startswith("/v1/"):
        return True
    return (method, path.rstrip("/")) in READ_WRITE_ROUTES


def refuse_read_token_elsewhere():
    """A `before_request` hook: a read token on any other route is a 403, whatever the route."""
    token = bearer_token()  # first: a request without one (every webhook) is done here
    if token and request.method != "OPTIONS" and not read_token_allowed(request.method, request.path) \
            and is_read_token(token):
        raise ApiError(403, "forbidden", "a read token (READ_API_TOKEN) only opens GET /v1/… and "
                                         "POST /v1/checkout-sessions")
