"""What every webhook view does after verifying: store once, commit, enqueue, answer."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, jsonify

from db.enums import InboxSource
from tasks.inbox import store_event
from workers.actors import enqueue_inbox


def accept_event(
    *, source: InboxSource, event_id: str, type: str, payload: dict[str, Any], subject: str | None,
    occurred_at: datetime | None,
):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    with runtime.db.session_scope() as session:
        stored = store_event(
            session=session, source=source, event_id=event_id, type=type, payload=payload,
            subject=subject, occurred_at=occurred_at,
        )
    # only after the commit: a worker must find the row it is told about
    if not stored.duplicate:
        enqueue_inbox([stored.id])
    current_app.logger.info(
        "event received", extra={"event": {"source": source.value, "event_id": event_id, "type": type,
                                           "subject": subject, "inbox_id": stored.id,
                                           "outcome": "duplicate" if stored.duplicate else "stored"}},
    )
    return jsonify({"received": True, "duplicate": stored.duplicate})
