"""GET /metrics (Prometheus text format); refused webhook requests are counted and logged here.

Unauthenticated, like most exporters: it carries counts, never ids or payloads. Keep it off the
public internet (bind the scrape to the private network, or filter /metrics at the proxy).
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from workers import metrics

bp = Blueprint("metrics", __name__)

WEBHOOK_SOURCES = {"/webhooks/stripe": "stripe", "/webhooks/platform": "platform"}


@bp.get("/metrics")
def scrape():
    body, content_type = metrics.exposition(current_app.config["COURSEPIPE_RUNTIME"].db)
    return Response(body, content_type=content_type)


@bp.after_app_request
def count_rejected(response):
    # a refused webhook never reaches the store: count it here, by the error code it was answered with
    source = WEBHOOK_SOURCES.get(request.path)
    if source is not None and request.method == "POST" and response.status_code >= 400:
        body = response.get_json(silent=True) if response.is_json else None
        reason = ((body or {}).get("error") or {}).get("code") or f"http_{response.status_code}"
        metrics.event_rejected(source, str(reason))
        current_app.logger.warning("webhook rejected", extra={"event": {
            "source": source, "outcome": "rejected", "reason": str(reason), "status": response.status_code,
            "error": ((body or {}).get("error") or {}).get("message"), "remote": request.remote_addr}})
    return response
