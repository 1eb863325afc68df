"""Redeliveries re-send a pending event at most once per interval; /metrics keeps one label for unknown types."""
from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from db.enums import InboxSource
from db.models import InboxEvent
from db.types import utcnow
import tasks.inbox.store as inbox_store
from tasks.inbox.store import store_event
from tests.ingress.test_metrics import scrape, value
from tests.signing import platform_event, platform_headers, stripe_event, stripe_headers


def _age(runtime, seconds: float) -> None:
    """Make every stored row look received (and last sent) `seconds` ago."""
    past = utcnow() - timedelta(seconds=seconds)
    with runtime.db.session_scope() as s:
        s.execute(update(InboxEvent).values(received_at=past, enqueued_at=None))


def test_500_replays_of_a_pending_event_put_one_more_message_on_the_queue(client, runtime, monkeypatch):
    # an interval longer than 500 requests can take on a loaded machine: the count depends on the rule only
    monkeypatch.setattr("tasks.inbox.store.REDELIVERY_RESEND_AFTER", timedelta(minutes=10))
    body = json.dumps(stripe_event("customer.created"))
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    queue = runtime.broker.queues["inbox"]
    assert queue.qsize() == 1
    _age(runtime, inbox_store.REDELIVERY_RESEND_AFTER.total_seconds() + 1)  # the workers are stopped: still pending
    for _ in range(500):
        response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
        assert response.get_json() == {"received": True, "duplicate": True}
    assert queue.qsize() == 2
    _age(runtime, inbox_store.REDELIVERY_RESEND_AFTER.total_seconds() + 1)  # another interval later: one more
    for _ in range(5):
        client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert queue.qsize() == 3


@pytest.mark.postgres
def test_concurrent_redeliveries_resend_once(pg_database):
    with pg_database.direct_autocommit() as conn:
        store_event(session=conn, source=InboxSource.PLATFORM, event_id="pev_1", type="student.upserted",
                    payload={"id": "pev_1"}, subject="student:s", occurred_at=None)
    with pg_database.session_scope() as s:
        s.execute(update(InboxEvent).values(received_at=utcnow() - timedelta(minutes=1)))
    results, barrier = [], threading.Barrier(12)

    def redeliver():
        barrier.wait()
        with pg_database.direct_autocommit() as conn:
            results.append(store_event(session=conn, source=InboxSource.PLATFORM, event_id="pev_1",
                                       type="student.upserted", payload={"id": "pev_1"}, subject="student:s",
                                       occurred_at=None))

    threads = [threading.Thread(target=redeliver) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and all(r.duplicate for r in results)
    assert sum(r.resend for r in results) == 1


def test_unknown_event_types_share_one_metrics_label(client, runtime):
    before = scrape(client)
    types = [f"made.up.{i}" for i in range(3)]
    for type_ in types:
        body = json.dumps(stripe_event("customer.created") | {"type": type_})
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    raw = json.dumps(platform_event("student.upserted", {"student_id": "stu_1"})).encode()
    assert client.post("/webhooks/platform", data=raw, headers=platform_headers(raw)).status_code == 200
    after = scrape(client)
    assert not any(dict(labels).get("type", "").startswith("made.up") for _name, labels in after)
    moved = (value(after, "coursepipe_events_received_total", source="stripe", type="other")
             - value(before, "coursepipe_events_received_total", source="stripe", type="other"))
    assert moved == 3
    assert value(after, "coursepipe_events_received_total", source="platform", type="student.upserted") >= 1
