"""GET /metrics: Prometheus text that prometheus_client's own parser reads, with counters that move."""
from __future__ import annotations

import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from db.enums import OutboxChannel, OutboxStatus
from db.models import OutboxMessage
from tests import factories
from tests.conftest import drain
from tests.signing import platform_event, platform_headers, stripe_headers
from tests.tasks.purchases.payments_support import checkout


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_as_events_arrive(client, runtime, worker):
    with runtime.db.session_scope() as s:
        factories.program(s)
    before = scrape(client)
    event = checkout(cs="cs_m_1", pi="pi_m_1")
    body = json.dumps(event)
    for _ in range(2):  # the second is a redelivery
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    bad = json.dumps(checkout(cs="cs_m_2"))
    assert client.post("/webhooks/stripe", data=bad, headers={"Stripe-Signature": "t=1,v1=00",
                                                              "Content-Type": "application/json"}).status_code == 400
    pev = json.dumps(platform_event("student.upserted", {"student_id": "stu_m", "email": "m@example.test",
                                                          "name": "M", "timezone": "UTC"})).encode()
    assert client.post("/webhooks/platform", data=pev, headers=platform_headers(pev)).status_code == 200
    assert client.post("/webhooks/platform", data=pev, headers=platform_headers(pev, secret="wrong")).status_code == 400
    drain(runtime)
    after = scrape(client)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    stripe_type = dict(source="stripe", type="checkout.session.completed")
    assert moved("coursepipe_events_received_total", **stripe_type) == 1
    assert moved("coursepipe_events_duplicate_total", **stripe_type) == 1
    assert moved("coursepipe_events_rejected_total", source="stripe", reason="invalid_signature") == 1
    assert moved("coursepipe_events_rejected_total", source="platform", reason="invalid_signature") == 1
    assert moved("coursepipe_events_received_total", source="platform", type="student.upserted") == 1
    assert moved("coursepipe_events_processed_total", outcome="processed", **stripe_type) == 1
    assert moved("coursepipe_event_processing_seconds_count", **stripe_type) == 1
    assert moved("coursepipe_event_processing_seconds_bucket", le="+Inf", **stripe_type) == 1
    # backlogs come from the database at scrape time
    assert value(after, "coursepipe_metrics_database_up") == 1
    assert value(after, "coursepipe_inbox_events", status="pending") == 0
    assert value(after, "coursepipe_inbox_events", status="failed") == 0
    assert ("coursepipe_inbox_events", (("status", "failed"),)) in after  # present at zero
    assert value(after, "coursepipe_inbox_oldest_pending_age_seconds") == 0


def test_failures_and_outbox_backlog(client, runtime, worker):
    before = scrape(client)
    body = json.dumps(checkout(cs="cs_m_3", pi="pi_m_3", course="NOPE"))  # unknown course: permanent failure
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    with runtime.db.session_scope() as s:
        for n, (channel, status, error) in enumerate([
            (OutboxChannel.MAIL, OutboxStatus.SENT, None), (OutboxChannel.MAIL, OutboxStatus.DEAD, "SMTP 550"),
            (OutboxChannel.PLATFORM, OutboxStatus.PENDING, "platform answered HTTP 503"),
        ]):
            s.add(OutboxMessage(dedupe_key=f"m{n}", channel=channel, topic="t", payload={}, status=status,
                                last_error=error))
    drain(runtime)
    after = scrape(client)
    labels = dict(source="stripe", type="checkout.session.completed")
    assert value(after, "coursepipe_events_processed_total", outcome="failed", **labels) - \
        value(before, "coursepipe_events_processed_total", outcome="failed", **labels) == 1
    assert value(after, "coursepipe_inbox_events", status="failed") == 1
    assert ("coursepipe_inbox_events", (("status", "processed"),)) not in after  # history is not a backlog
    assert value(after, "coursepipe_outbox_messages", channel="mail", status="dead") == 1
    assert value(after, "coursepipe_outbox_messages", channel="platform", status="pending") == 1
    assert ("coursepipe_outbox_messages", (("channel", "mail"), ("status", "sent"))) not in after
    assert value(after, "coursepipe_outbox_retrying_messages", channel="platform") == 1


def test_one_json_line_per_event_received_and_processed(client, runtime, worker, caplog):
    from coursepipe.logs import JsonFormatter

    with runtime.db.session_scope() as s:
        factories.program(s)
    body = json.dumps(checkout(cs="cs_m_4", pi="pi_m_4", event_id="evt_log_1"))
    with caplog.at_level(logging.INFO):
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
        drain(runtime)
        bad = json.dumps(checkout(cs="cs_m_5"))
        client.post("/webhooks/stripe", data=bad, headers={"Stripe-Signature": "t=1,v1=00"})
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "event", None)]
    (rejected,) = [line for line in lines if line["msg"] == "webhook rejected"]
    assert (rejected["source"], rejected["reason"], rejected["status"]) == ("stripe", "invalid_signature", 400)
    mine = [line for line in lines if line.get("event_id") == "evt_log_1"]
    assert [line["msg"] for line in mine] == ["event received", "event processed"]
    received, processed = mine
    assert received["outcome"] == "stored" and received["subject"] == "payment:pi_m_4"
    assert processed["outcome"] == "processed" and processed["type"] == "checkout.session.completed"
    assert processed["subject"] == "payment:pi_m_4" and processed["inbox_id"] == received["inbox_id"]
    assert processed["latency_ms"] >= 0


def test_metrics_answer_when_the_database_does_not(client, runtime, monkeypatch):
    from tasks.reporting import ops

    def broken(**_):
        raise RuntimeError("database down")

    monkeypatch.setattr(ops, "inbox_summary", broken)
    samples = scrape(client)
    assert value(samples, "coursepipe_metrics_database_up") == 0


def test_a_broken_metrics_backend_never_breaks_a_webhook(client, runtime, monkeypatch):
    from workers import metrics

    class Broken:
        def __getattr__(self, name):
            raise OSError("metrics directory vanished")

    monkeypatch.setattr(metrics, "_metrics", Broken())
    body = json.dumps(checkout(cs="cs_m_9", pi="pi_m_9"))
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200 and response.get_json() == {"received": True, "duplicate": False}
