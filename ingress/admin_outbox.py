"""POST /admin/outbox/retry-dead: every dead outbox message (optionally of one channel) due again now."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from db.enums import OutboxChannel
from ingress import roles
from ingress.bodies import json_object
from ingress.roles import require_role
from ingress.errors import ApiError
from tasks.messaging import delivery
from workers.actors import send

bp = Blueprint("admin_outbox", __name__, url_prefix="/admin")


@bp.post("/outbox/retry-dead")
@require_role("operator")
def retry_dead():
    body = json_object("channel", "reason", optional=True)
    channel = body.get("channel")
    if channel is not None and channel not in {c.value for c in OutboxChannel}:
        raise ApiError(400, "invalid_channel", "channel is 'mail' or 'platform' (or absent for both)")
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    with runtime.db.session_scope() as session:
        ids = delivery.retry_dead(session=session, channel=OutboxChannel(channel) if channel else None)
        roles.record_action(session, "outbox.retry_dead", f"outbox:{channel or 'all'}", roles.reason_of(body),
                            retried=len(ids))
    if ids:
        send("relay_outbox")  # after the commit
    return jsonify({"retried": len(ids), "ids": ids})
