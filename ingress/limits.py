"""Rate limit on failed authentication (Flask-Limiter): guessing ADMIN_TOKEN or a read token is slow.

Every 401 under /admin and /v1 (a wrong bearer token, a refused dashboard login) counts against the
client's address; past AUTH_FAILURES in a window, every request there from that address is a 429
until the window passes, the right token included. The counters live in Redis when REDIS_URL is
set (shared by every ingress process), in this process's memory otherwise. Behind a proxy the
address is the proxy's unless TRUSTED_PROXIES says how many proxies append to X-Forwarded-For
(`ingress.app`, docs/runbook.md).
"""
from __future__ import annotations

import logging

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import parse

AUTH_FAILURES = "20 per minute"
PASSWORD_CHECKS = parse("20 per minute")  # a dashboard login's checks, counted before they run

log = logging.getLogger("coursepipe.ingress")
PROTECTED_PREFIXES = ("/admin", "/v1")


def _not_protected() -> bool:
    return not request.path.startswith(PROTECTED_PREFIXES)


def _on_protected_paths(hook):
    """A hook of Flask-Limiter's that runs only under PROTECTED_PREFIXES; elsewhere it passes the response on."""

    def guarded(*args):
        if _not_protected():
            return args[0] if args else None  # an after_request hook hands the response on
        return hook(*args)

    return guarded


def _storage_uri(redis_url: str | None) -> str:
    """The limits library's name for REDIS_URL: a Unix socket is `redis+unix://` to it (`unix://`, which redis-py
    and so the broker take, is an unknown scheme to it)."""
    if not redis_url:
        return "memory://"
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def install(app: Flask, settings) -> Limiter:
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    before = [list(registry.get(None, ())) for registry in hooks]
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=_storage_uri(settings.redis_url),
        key_prefix=f"{settings.redis_namespace}:limits",
        strategy="fixed-window",
        application_limits=[AUTH_FAILURES],
        application_limits_exempt_when=_not_protected,
        application_limits_deduct_when=lambda response: response.status_code == 401,
        swallow_errors=True,  # a Redis outage must not take the admin API with it
        headers_enabled=False,
    )
    # Flask-Limiter's three app-wide hooks resolve limits, exemptions and context on every request, even
    # exempt ones (~15 % of a webhook's Python): they run only where a limit can apply
    for registry, known in zip(hooks, before):
        registry[None] = [hook if hook in known else _on_protected_paths(hook) for hook in registry.get(None, [])]
    app.extensions["coursepipe_limits"] = (limiter, f"{settings.redis_namespace}:limits")
    return limiter


def password_check_allowed() -> bool:
    """Count one password check from this client's address before it runs; False past PASSWORD_CHECKS in the
    window. The failures counted after the answer (AUTH_FAILURES) let concurrent attempts all through before
    the first is counted; each check costs an argon2 hash (~0.1 s of CPU and 64 MiB), so it is counted first.
    A counter store that fails lets the check run (a Redis outage must not lock the dashboard)."""
    limiter, prefix = current_app.extensions["coursepipe_limits"]
    try:
        return limiter.limiter.hit(PASSWORD_CHECKS, prefix, "password-check", get_remote_address())
    except Exception as exc:  # noqa: BLE001 - the store's own errors vary with it
        log.warning("login attempt not counted: %s", exc)
        return True
