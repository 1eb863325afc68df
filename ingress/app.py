"""create_app(): the Flask ingress. Extensions and the runtime are bound here, not at import."""
from __future__ import annotations

import secrets
from datetime import timedelta

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from coursepipe.settings import INGRESS_SECRETS, Settings
from ingress import cookies, guards, limits
from ingress.auth import refuse_read_token_elsewhere
from ingress.errors import register_error_handlers
from workers.runtime import Runtime, current

MAX_BODY_BYTES = 256 * 1024


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """The app on a runtime the caller built (`coursepipe.runtime.init_runtime`), or on this process's."""
    runtime = runtime or current()
    settings = settings or runtime.settings
    settings.require(*INGRESS_SECRETS)

    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        COURSEPIPE_SETTINGS=settings,
        COURSEPIPE_RUNTIME=runtime,
        # the dashboard's session cookie is signed with a key of its own, never derived from a token (a
        # signed cookie would be an offline oracle for it): SESSION_SECRET, or random per process
        # (ingress/gunicorn_conf.py draws one per server, shared by its workers); a restart then logs users out
        SECRET_KEY=settings.session_secret or secrets.token_hex(32),
        SESSION_COOKIE_NAME="coursepipe_admin",
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.admin_session_hours),  # as the server-side session
        JSON_SORT_KEYS=False,
    )
    if settings.trusted_proxies:
        # the client's address is the one the nearest trusted proxy appended to X-Forwarded-For; without this,
        # every client behind the proxy is the proxy's address to the rate limit, which one client can then
        # lock for all of them (gunicorn's forwarded_allow_ips sets the scheme, never the address)
        # only the address: the scheme stays gunicorn's (forwarded_allow_ips), which the cookie's Secure follows
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=0)  # type: ignore[method-assign]
    register_error_handlers(app)
    guards.install(app)
    limits.install(app, settings)
    app.before_request(refuse_read_token_elsewhere)
    cookies.install(app)  # server-side admin sessions ride in this cookie; Secure over TLS

    from ingress import (
        admin_catalog,
        admin_disputes,
        admin_operations,
        admin_people,
        admin_enrollments,
        admin_events,
        admin_outbox,
        dashboard,
        dashboard_catalog,
        dashboard_studio,
        health,
        metrics,
        openapi,
        read_bookings,
        read_courses,
        read_events,
        read_selling,
        read_statement,
        read_students,
        webhooks,
    )

    # one blueprint per concern: sources, admin API, read API, dashboard, metrics
    for module in (health, webhooks, admin_events, admin_catalog, admin_enrollments, admin_outbox, admin_disputes,
                   read_courses, read_students, read_bookings, read_events, read_selling, dashboard, metrics, openapi):
        app.register_blueprint(module.bp)
    app.register_blueprint(admin_people.bp)  # admin accounts, personal tokens, the audit log
    app.register_blueprint(admin_operations.bp)  # manual enrolments, credit adjustments, revoke, reinstate, refunds
    app.register_blueprint(read_statement.bp)  # a student's credit statement
    app.register_blueprint(dashboard_studio.bp)  # the student page, manual operations from the dashboard
    app.register_blueprint(dashboard_catalog.bp)  # the catalog: course builder, packages, publishing
    return app
