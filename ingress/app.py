"""create_app(): the Flask ingress. Extensions and the runtime are bound here, not at import."""
from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask

from coursepipe.settings import INGRESS_SECRETS, Settings
from ingress import cookies
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
        # the dashboard's session cookie is signed with a key derived from the admin token (never the
        # token itself); rotating ADMIN_TOKEN logs every dashboard session out
        SECRET_KEY=hmac.new(settings.admin_token.encode(), b"coursepipe dashboard session v1", hashlib.sha256).hexdigest(),
        SESSION_COOKIE_NAME="coursepipe_admin",
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        JSON_SORT_KEYS=False,
    )
    register_error_handlers(app)
    cookies.install(app)  # server-side admin sessions ride in this cookie; Secure over TLS

    from ingress import (
        admin_catalog,
        admin_operations,
        admin_people,
        admin_enrollments,
        admin_events,
        dashboard,
        dashboard_studio,
        health,
        metrics,
        read_bookings,
        read_courses,
        read_statement,
        read_students,
        webhooks,
    )

    # one blueprint per concern: sources, admin API, read API, dashboard, metrics
    for module in (health, webhooks, admin_events, admin_catalog, admin_enrollments, read_courses, read_students,
                   read_bookings, dashboard, metrics):
        app.register_blueprint(module.bp)
    app.register_blueprint(admin_people.bp)  # admin accounts, personal tokens, the audit log
    app.register_blueprint(admin_operations.bp)  # manual enrolments, credit adjustments, revoke, reinstate, refunds
    app.register_blueprint(read_statement.bp)  # a student's credit statement
    app.register_blueprint(dashboard_studio.bp)  # the student page, manual operations from the dashboard
    return app
