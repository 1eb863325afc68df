"""GET /healthz (process up) and GET /readyz (database reachable and at the migration head, broker reachable).

/readyz answers anyone with ready or not; what failed (which carries hosts, ports and role names)
only to a bearer ADMIN_TOKEN.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from db.migrate import NotAtHead, require_head
from ingress.auth import _matches, bearer_token

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
        require_head(runtime.db.engine)  # an unmigrated database (or one behind this code) is not ready
    except NotAtHead as exc:
        problems["database"] = str(exc)
    except Exception as exc:
        problems["database"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    client = getattr(runtime.broker, "client", None)
    if client is not None:
        try:
            client.ping()
        except Exception as exc:
            problems["broker"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    if problems:
        if _matches(bearer_token(), current_app.config["COURSEPIPE_SETTINGS"].admin_token):
            body = {"status": "unavailable", "error": {"code": "not_ready", "message": "; ".join(
                f"{k}: {v}" for k, v in problems.items())}, "checks": problems}
        else:
            body = {"status": "unavailable", "error": {"code": "not_ready", "message": "not ready: "
                    + ", ".join(sorted(problems)) + " unavailable"}}
        response = jsonify(body)
        response.status_code = 503
        return response
    return jsonify({"status": "ready"})
