"""What every webhook view does after verifying: store once, commit, enqueue, answer."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, jsonify

from workers import metrics
from db.enums import InboxSource
from tasks.purchases.fast_purchase import is_purchase
from tasks.inbox.store import store_event
from workers.actors import enqueue_inbox


def accept_event(
    *, source: InboxSource, event_id: str, type: str, payload: dict[str, Any], subject: str | None,
    occurred_at: datetime | None, raw: str | None = None,
):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    # one statement, committed on its own: durable before we answer, one round trip
    with runtime.db.direct_autocommit() as conn:
        stored = store_event(
            session=conn, source=source, event_id=event_id, type=type, payload=payload,
            subject=subject, occurred_at=occurred_at, raw=raw,
        )
    # only after the commit: a worker must find the row it is told about
    if not stored.duplicate or stored.resend:
        enqueue_inbox([stored.id], purchase=is_purchase(source.value, type, payload))
    metrics.event_received(source.value, type, stored.duplicate)
    current_app.logger.info(
        "event received", extra={"event": {"source": source.value, "event_id": event_id, "type": type,
                                           "subject": subject, "inbox_id": stored.id,
                                           "outcome": "duplicate" if stored.duplicate else "stored"}},
    )
    return jsonify({"received": True, "duplicate": stored.duplicate})
