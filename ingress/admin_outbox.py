"""POST /admin/outbox/retry-dead: dead outbox messages (optionally of one channel) due again now, up to
`delivery.RETRY_DEAD_BATCH` a call, oldest first. `remaining` says how many dead ones come after the last id
retried; the next call passes that id as `after`, so a message that died again meanwhile is not taken twice."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from db.enums import OutboxChannel
from ingress import roles
from ingress.bodies import json_object
from ingress.roles import require_role
from ingress.errors import ApiError
from ingress.guards import BIGINT_MAX
from tasks.errors import ValidationFailed
from tasks.messaging import delivery
from workers.actors import send

bp = Blueprint("admin_outbox", __name__, url_prefix="/admin")


@bp.post("/outbox/retry-dead")
@require_role("operator")
def retry_dead():
    body = json_object("channel", "after", "reason", optional=True)
    channel, after = body.get("channel"), body.get("after")
    if channel is not None and (not isinstance(channel, str) or channel not in {c.value for c in OutboxChannel}):
        raise ApiError(400, "invalid_channel", "channel is 'mail' or 'platform' (or absent for both)")
    if after is not None and (type(after) is not int or not 0 <= after <= BIGINT_MAX):
        raise ValidationFailed("after: the last id a previous call retried (an integer, 0 or more)", field="after")
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    only = OutboxChannel(channel) if channel else None
    with runtime.db.session_scope() as session:
        ids = delivery.retry_dead(session=session, channel=only, after=after)
        remaining = delivery.dead_count(session=session, channel=only, after=ids[-1] if ids else after)
        roles.record_action(session, "outbox.retry_dead", f"outbox:{channel or 'all'}", roles.reason_of(body),
                            retried=len(ids), **({"remaining": remaining} if remaining else {}))
    if ids:
        send("relay_outbox")  # after the commit
    return jsonify({"retried": len(ids), "ids": ids, "remaining": remaining})
