"""create_app(): the Flask ingress. Extensions and the runtime are bound here, not at import."""
from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask

from coursepipe.runtime import Runtime, current, init_runtime
from coursepipe.settings import INGRESS_SECRETS, Settings
from ingress.auth import refuse_read_token_elsewhere
from ingress.errors import register_error_handlers

MAX_BODY_BYTES = 256 * 1024


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    settings.require(*INGRESS_SECRETS)
    if runtime is None:
        try:
            runtime = current()
        except RuntimeError:
            runtime = init_runtime(settings)

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
    app.before_request(refuse_read_token_elsewhere)

    from ingress import (
        admin_catalog,
        admin_enrollments,
        admin_events,
        admin_outbox,
        dashboard,
        health,
        metrics,
        openapi,
        read_bookings,
        read_courses,
        read_events,
        read_selling,
        read_students,
        webhooks,
    )

    # one blueprint per concern: sources, admin API, read API, dashboard, metrics
    for module in (health, webhooks, admin_events, admin_catalog, admin_enrollments, admin_outbox, read_courses,
                   read_students, read_bookings, read_events, read_selling, dashboard, metrics, openapi):
        app.register_blueprint(module.bp)
    return app
