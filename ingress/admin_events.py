"""Inbox inspection and replay for admins: GET /admin/events, POST /admin/events/<id>/replay."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from db.enums import InboxStatus
from ingress import roles
from ingress.bodies import json_object
from ingress.paging import page_args, read_page
from ingress.roles import require_role
from ingress.errors import ApiError
from tasks.inbox import admin as inbox
from tasks.errors import NotFound
from workers.actors import enqueue_inbox

bp = Blueprint("admin_events", __name__, url_prefix="/admin")



@bp.get("/events")
@require_role("viewer")
def list_events():
    status_raw = request.args.get("status")
    try:
        status = InboxStatus(status_raw) if status_raw else None
    except ValueError:
        raise ApiError(400, "invalid_status", f"status must be one of {[s.value for s in InboxStatus]}") from None
    page = page_args(default=50)
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    with runtime.db.session_scope() as session:
        rows, next_before = read_page(page, lambda limit, before: inbox.list_events(
            session=session, status=status, limit=limit, before=before))
        events = [inbox.event_view(e) for e in rows]
    return jsonify({"events": events, "next_before": next_before})


@bp.post("/events/<int:inbox_id>/replay")
@require_role("operator")
def replay_event(inbox_id: int):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    try:
        with runtime.db.session_scope() as session:
            event = inbox.replay(session=session, inbox_id=inbox_id)
            view = inbox.event_view(event)
            roles.record_action(session, "event.replay", f"inbox_event:{inbox_id}",
                                roles.reason_of(json_object(optional=True)))
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except inbox.PayloadPruned as exc:
        raise ApiError(409, "payload_pruned", str(exc)) from None
    except inbox.NotReplayable as exc:
        raise ApiError(409, "already_processed", str(exc)) from None
    enqueue_inbox([inbox_id])
    return jsonify({"replayed": True, "event": view}), 202
