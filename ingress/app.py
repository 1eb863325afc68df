"""create_app(): the Flask ingress. Extensions and the runtime are bound here, not at import."""
from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

from flask import Flask

from coursepipe.runtime import Runtime, current, init_runtime
from coursepipe.settings import INGRESS_SECRETS, Settings
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

    from ingress import admin_events, health, webhooks

    for module in (health, webhooks, admin_events):
        app.register_blueprint(module.bp)
    for module in _optional_blueprints():
        app.register_blueprint(module.bp)
    return app


def _optional_blueprints():
    """Blueprints of later concerns register here as they land (catalog, read API, dashboard)."""
    import importlib

    modules = []
    for name in ("ingress.admin_catalog", "ingress.admin_enrollments", "ingress.read_courses",
                 "ingress.read_students", "ingress.read_bookings", "ingress.dashboard", "ingress.metrics"):
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return modules
