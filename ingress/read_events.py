"""GET /v1/events: the catch-up feed of outbound platform events (read token or admin)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ingress.paging import limit_arg
from ingress.roles import require_reader
from ingress.errors import ApiError
from tasks.messaging import event_feed

bp = Blueprint("read_events", __name__, url_prefix="/v1")


@bp.get("/events")
@require_reader
def list_events():
    limit = limit_arg(default=event_feed.DEFAULT_LIMIT, maximum=event_feed.MAX_LIMIT)
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    try:
        event_feed.decode_cursor(request.args.get("after"))
    except event_feed.InvalidCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    with runtime.db.session_scope() as session:  # committed before the read: positions are a prefix
        event_feed.assign_positions(session=session)
    try:
        with runtime.db.session_scope() as session:
            page = event_feed.read(session=session, after=request.args.get("after"), limit=limit)
    except event_feed.InvalidCursor as exc:  # past the newest event
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return jsonify({"events": page.events, "next": page.next})
