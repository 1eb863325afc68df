"""GET /healthz (process up) and GET /readyz (database and broker reachable)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    problems = {}
    try:
        runtime.db.ping()
    except Exception as exc:
        problems["database"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    client = getattr(runtime.broker, "client", None)
    if client is not None:
        try:
            client.ping()
        except Exception as exc:
            problems["broker"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if problems:
        response = jsonify({"status": "unavailable", "error": {"code": "not_ready", "message": "; ".join(
            f"{k}: {v}" for k, v in problems.items())}, "checks": problems})
        response.status_code = 503
        return response
    return jsonify({"status": "ready"})
