"""Ops reads: queue depths from a real Redis broker, the inbox summary, the enrollment search."""
from __future__ import annotations

from datetime import timedelta

import pytest

from db.enums import InboxSource, InboxStatus
from db.models import InboxEvent
from db.types import utcnow
from tasks.reporting import ops
from workers.queue_depths import messages_held, queue_depths
from tests import factories


@pytest.fixture
def redis_broker(redis_url, redis_namespace):
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url, namespace=redis_namespace)
    yield broker
    broker.close()


def test_redis_queue_depths(redis_broker):
    import dramatiq

    @dramatiq.actor(broker=redis_broker, queue_name="ops_test", max_retries=0)
    def noop(n):
        return n

    for n in range(3):
        noop.send(n)
    noop.send_with_options(args=(9,), delay=60_000)
    # one message fetched and not acked: in flight, as a worker would hold it
    consumer = redis_broker.consume("ops_test", prefetch=1, timeout=1000)
    message = next(consumer)
    assert message is not None
    try:
        depth = {d.queue: d for d in queue_depths(redis_broker)}["ops_test"]
        assert (depth.ready, depth.in_flight, depth.delayed, depth.dead) == (2, 1, 1, 0)
        assert messages_held(redis_broker, "ops_test") == 4  # one queue read alone: what the sweeper sizes by
        consumer.nack(message)  # dead-lettered
        depth = {d.queue: d for d in queue_depths(redis_broker)}["ops_test"]
        assert (depth.ready, depth.in_flight, depth.dead) == (2, 0, 1)
    finally:
        consumer.close()


def test_stub_queue_depths_and_dead_letters():
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.emit_after("process_boot")

    @dramatiq.actor(broker=broker, queue_name="q1", max_retries=0)
    def boom():
        raise ValueError("boom")

    boom.send()
    assert [d.as_dict() for d in queue_depths(broker)] == [
        {"queue": "q1", "ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}]
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("q1", fail_fast=False)
    finally:
        worker.stop()
    assert queue_depths(broker)[0].dead == 1


def test_inbox_summary_oldest_pending(session):
    now = utcnow()
    for n, (status, age) in enumerate([(InboxStatus.PENDING, 120), (InboxStatus.PENDING, 5),
                                       (InboxStatus.FAILED, 600), (InboxStatus.PROCESSED, 900)]):
        session.add(InboxEvent(source=InboxSource.PLATFORM, event_id=f"e{n}", type="t", payload={}, status=status,
                               received_at=now - timedelta(seconds=age)))
    session.flush()
    summary = ops.inbox_summary(session=session, now=now)
    assert summary.by_status["pending"] == 2 and summary.by_status["failed"] == 1
    assert summary.by_status["waiting"] == 0
    assert summary.oldest_pending_age_seconds == pytest.approx(120, abs=1)
    assert [e.event_id for e in ops.problem_events(session=session)] == ["e2"]


def test_search(session):
    student = factories.student(session)
    program = factories.program(session)
    enrollment = factories.enrollment(session, student, program, session_id="cs_s")
    assert [r["id"] for r in ops.search_enrollments(session=session, query="stu_1")] == [enrollment.id]
    assert [r["id"] for r in ops.search_enrollments(session=session, query=" cs_s ")] == [enrollment.id]
    assert [r["id"] for r in ops.search_enrollments(session=session, query=str(enrollment.id))] == [enrollment.id]
    assert ops.search_enrollments(session=session, query="cs_") == []  # exact, not a prefix scan
    assert len(ops.search_enrollments(session=session, query="")) == 1
