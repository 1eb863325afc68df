"""Bearer-token checks for /admin and /v1 (constant-time compare)."""
from __future__ import annotations

import hmac
from functools import wraps

from flask import current_app, request

from ingress.errors import ApiError


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


def require_admin(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        settings = current_app.config["COURSEPIPE_SETTINGS"]
        if not _matches(bearer_token(), settings.admin_token):
            raise ApiError(401, "unauthorized", "a valid bearer token is required")
        return view(*args, **kwargs)

    return wrapped


def require_reader(view):
    """The read API accepts the admin token or the read token (READ_API_TOKEN)."""

    @wraps(view)
    def wrapped(*args, **kwargs):
        settings = current_app.config["COURSEPIPE_SETTINGS"]
        read_token = current_app.config.get("READ_API_TOKEN")
        if not _matches(bearer_token(), settings.admin_token, read_token):
            raise ApiError(401, "unauthorized", "a valid bearer token is required")
        return view(*args, **kwargs)

    return wrapped
