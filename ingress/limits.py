"""Rate limit on failed authentication (Flask-Limiter): guessing ADMIN_TOKEN or a read token is slow.

Every 401 under /admin and /v1 (a wrong bearer token, a refused dashboard login) counts against the
client's address; past AUTH_FAILURES in a window, every request there from that address is a 429
until the window passes, the right token included. The counters live in Redis when REDIS_URL is
set (shared by every ingress process), in this process's memory otherwise. Behind a proxy the
address is the proxy's unless the proxy's X-Forwarded-For is trusted (see docs/runbook.md).
"""
from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

AUTH_FAILURES = "20 per minute"
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


def install(app: Flask, settings) -> Limiter:
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    before = [list(registry.get(None, ())) for registry in hooks]
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.redis_url or "memory://",
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
    return limiter
