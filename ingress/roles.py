"""Who is asking, and may they: the principal of a request and the role each route needs.

- The JSON API (`/admin/…`) takes a bearer: ADMIN_TOKEN (the owner's break-glass credential) or a
  personal API token (`cpa_…`, acting with its owner's role).
- The dashboard takes its server-side session (`tasks.admins.accounts`): the cookie names a row that
  logout revokes and that ends at an absolute time.
- The read API (`/v1/…`) takes ADMIN_TOKEN, a read token (READ_API_TOKEN) or a personal token: any
  role reads (`GET`); `POST /v1/checkout-sessions` creates a Stripe session on a student's behalf, so a
  personal token needs `operator` for it (a read token may: the frontend sells with it).
- `viewer` reads; `operator` also replays, retries, re-fulfils and makes manual adjustments; `owner`
  also edits and publishes the catalog and manages admins. Too low a role: 403 `forbidden`.

`record_action` writes the audit entry of the acting principal in the caller's transaction; its log line
(`"msg": "admin action"` on the audit logger, never filtered by LOG_LEVEL) follows the commit.
"""
from __future__ import annotations

import hmac
import hashlib
from functools import wraps
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, session, url_for

from ingress.auth import _matches, bearer_token, is_read_token
from ingress.errors import ApiError
from tasks.admins import accounts
from tasks.admins import audit
from tasks.admins.accounts import Principal
from tasks.errors import ValidationFailed

SESSION_TOKEN = "sid"  # the Flask session key holding the server-side session's token


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


def _settings():
    return current_app.config["COURSEPIPE_SETTINGS"]


def break_glass_fingerprint() -> str:
    """What a break-glass session remembers of ADMIN_TOKEN (never the token): rotating it ends them."""
    return hmac.new(_settings().admin_token.encode(), b"coursepipe break-glass session v1", hashlib.sha256).hexdigest()


def bearer_principal() -> Principal | None:
    token = bearer_token()
    if not token:
        return None
    if _matches(token, _settings().admin_token):
        return Principal.break_glass()
    if token.startswith(accounts.TOKEN_PREFIX):
        with _runtime().db.session_scope() as s:
            return accounts.token_principal(session=s, token=token)
    return None


def session_principal() -> Principal | None:
    if "session_principal" not in g:
        token = session.get(SESSION_TOKEN)
        principal = None
        if token:
            with _runtime().db.session_scope() as s:
                principal = accounts.session_principal(session=s, token=token,
                                                       break_glass_fingerprint=break_glass_fingerprint())
        g.session_principal = principal
    return g.session_principal


def current_principal() -> Principal:
    return g.principal


def _authorise(principal: Principal, role: str) -> None:
    if not principal.can(role):
        raise ApiError(403, "forbidden", f"this needs the {role} role; {principal.actor} is {principal.role}")
    g.principal = principal


def _bearer_or_401():
    principal = bearer_principal()
    if principal is None:
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    return principal


def require_role(role: str):
    """JSON API: a bearer with at least `role` (401 without a valid bearer, 403 below the role)."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            _authorise(_bearer_or_401(), role)
            return view(*args, **kwargs)

        return wrapped

    return decorate


def dashboard_role(role: str | None = None):
    """Dashboard: a live session; `role` or, by default, viewer for GET and operator for POST."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            principal = session_principal()
            if principal is None:
                session.pop(SESSION_TOKEN, None)
                return redirect(url_for("dashboard.login", next=_back_after_login()))
            _authorise(principal, role or ("viewer" if request.method == "GET" else "operator"))
            return view(*args, **kwargs)

        return wrapped

    return decorate


def _back_after_login() -> str:
    """The `next` of the login page: this page; but for an action (a POST: the redirect after login is
    followed with a GET, which its URL does not take) the page its button was on, as a Referer from this
    site names it, else the dashboard home. The login checks `next` as it checks any (no open redirect)."""
    if request.method in ("GET", "HEAD"):
        return request.full_path.rstrip("?")
    try:
        referrer = urlsplit(request.referrer or "")
    except ValueError:  # a header the client wrote: `http://[::1/…` is no URL
        return url_for("dashboard.home")
    if referrer.netloc != request.host or not referrer.path:
        return url_for("dashboard.home")
    return referrer.path + (f"?{referrer.query}" if referrer.query else "")


def require_reader(view=None, *, role: str = "viewer"):
    """The read API: ADMIN_TOKEN, a read token, or a personal token of at least `role` (401 without a
    valid bearer, 403 for a personal token below the role)."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not is_read_token(bearer_token()):
                _authorise(_bearer_or_401(), role)
            return view(*args, **kwargs)

        return wrapped

    return decorate(view) if view is not None else decorate


def any_principal(role: str = "viewer") -> Principal:
    """A bearer or a dashboard session with at least `role` (for JSON reads the dashboard links to)."""
    principal = bearer_principal() or session_principal()
    if principal is None:
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    _authorise(principal, role)
    return principal


def record_action(db_session, action: str, target: str | None = None, reason: str | None = None, **details):
    """The audit entry of the acting principal, in the caller's transaction (its log line once that commits).
    The log names the admin by account id (the entry has the e-mail), and the reason, free text, stays out of it."""
    return audit.record(session=db_session, principal=current_principal(), action=action, target=target,
                        reason=reason, details=details)


def reason_of(data) -> str | None:
    """An optional reason from a JSON body or a form (existing actions; manual operations require one): a string
    or null; anything else is a 400 naming `reason` (it was dropped without a word)."""
    value = data.get("reason") if hasattr(data, "get") else None
    if value is not None and not isinstance(value, str):
        raise ValidationFailed("reason: must be a string (or null)", field="reason")
    return value.strip()[:audit.MAX_REASON] or None if value is not None else None
