"""End to end on the production shape: signed webhooks → PostgreSQL inbox → Redis broker → Dramatiq worker."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from db.enums import BundleKind, InboxStatus
from db.models import InboxEvent
from tests import factories
from tests.conftest import make_settings
from tests.signing import stripe_headers
from tests.tasks.purchases.payments_support import charge_refunded, checkout, dispute_created, state


@pytest.fixture
def redis_runtime(pg_database, redis_url, redis_namespace):
    from coursepipe.runtime import init_runtime, reset_runtime

    rt = init_runtime(make_settings(pg_database.url, redis_url=redis_url, redis_namespace=redis_namespace),
                      db=pg_database)
    yield rt
    reset_runtime()


def _wait_until(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _statuses(db) -> list[InboxStatus]:
    with db.session_scope() as s:
        return list(s.scalars(select(InboxEvent.status).order_by(InboxEvent.id)))


def test_purchase_redelivered_thirty_times_with_a_partial_refund_first_and_a_dispute(redis_runtime):
    import dramatiq

    from ingress.app import create_app

    db = redis_runtime.db
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 4),))
    client = create_app(redis_runtime.settings, runtime=redis_runtime).test_client()
    refund = json.dumps(charge_refunded(pi="pi_r", refunded=6000, refunds=[("re_r", 6000)]))
    purchase = json.dumps(checkout(cs="cs_r", pi="pi_r"))
    dispute = json.dumps(dispute_created(pi="pi_r", dispute="dp_r"))
    assert client.post("/webhooks/stripe", data=refund, headers=stripe_headers(refund)).status_code == 200
    barrier = threading.Barrier(30)

    def redeliver(_):
        barrier.wait()
        return client.post("/webhooks/stripe", data=purchase, headers=stripe_headers(purchase)).get_json()

    worker = dramatiq.Worker(redis_runtime.broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            answers = list(pool.map(redeliver, range(30)))
        assert [a["duplicate"] for a in answers].count(False) == 1
        assert client.post("/webhooks/stripe", data=dispute, headers=stripe_headers(dispute)).status_code == 200
        assert _wait_until(lambda: _statuses(db) == [InboxStatus.PROCESSED] * 3), _statuses(db)
    finally:
        worker.stop()
    enrollment = state(db)["enrollments"][0]
    assert enrollment["status"] == "suspended" and enrollment["refunded"] == 6000
    assert enrollment["steps"] == ["unbooked"] * 3 and enrollment["lots"] == [("private", 4, 2)]


def test_inbox_consumer_polls_an_empty_queue_more_often_than_the_others(redis_runtime):
    """A quiet system's webhook waits for the inbox consumer's next poll: its back-off ceiling is lower."""
    import dramatiq

    from workers.actors import INBOX_QUEUE
    from workers.broker import INBOX_IDLE_POLL_MS
    from workers.jobs import OUTBOX_QUEUE

    worker = dramatiq.Worker(redis_runtime.broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        consumers = worker.consumers
        assert _wait_until(lambda: all(getattr(c, "consumer", None) for c in consumers.values()))
        timeouts = {name: thread.consumer.timeout for name, thread in consumers.items()}
    finally:
        worker.stop()
    assert INBOX_IDLE_POLL_MS < 100
    assert timeouts[INBOX_QUEUE] == INBOX_IDLE_POLL_MS
    assert timeouts[OUTBOX_QUEUE] == 100 and timeouts[f"{INBOX_QUEUE}.DQ"] == 100
