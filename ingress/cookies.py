"""The dashboard cookie's `Secure` flag: COOKIE_SECURE=auto (default) sets it when the request came over
TLS (`request.is_secure`: https, or X-Forwarded-Proto from a proxy gunicorn trusts), `true` always,
`false` never (plain-HTTP development)."""
from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface


class DashboardSessionInterface(SecureCookieSessionInterface):
    def open_session(self, app: Flask, request):
        # without a cookie (every webhook, every bearer-token call) the answer is a new empty session, as
        # Flask's own would give: skip building the signing serializer (~10 % of a webhook's Python)
        # (no Cookie header at all: not even parse the empty cookie jar)
        if app.secret_key and ("HTTP_COOKIE" not in request.environ
                               or not request.cookies.get(self.get_cookie_name(app))):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session, response) -> None:
        # an empty session nobody touched sets, deletes and varies nothing (Flask's own returns early too,
        # after reading six cookie settings)
        if not session and not session.modified and not session.accessed:
            return
        super().save_session(app, session, response)

    def get_cookie_secure(self, app: Flask) -> bool:
        mode = app.config["COURSEPIPE_SETTINGS"].cookie_secure
        if mode == "auto":
            return bool(request) and request.is_secure
        return mode == "true"


def install(app: Flask) -> None:
    app.session_interface = DashboardSessionInterface()
