"""The dashboard cookie's `Secure` flag: COOKIE_SECURE=auto (default) sets it when the request came over
TLS (`request.is_secure`: https, or X-Forwarded-Proto from a proxy gunicorn trusts), `true` always,
`false` never (plain-HTTP development)."""
from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface


class DashboardSessionInterface(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:
        mode = app.config["COURSEPIPE_SETTINGS"].cookie_secure
        if mode == "auto":
            return bool(request) and request.is_secure
        return mode == "true"


def install(app: Flask) -> None:
    app.session_interface = DashboardSessionInterface()
