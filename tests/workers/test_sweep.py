"""The sweeper (`resend_stale`): rows whose message was lost are sent again, all at once when the queue
cannot be holding them, one batch at a time while it may; a paid course checkout goes out marked as the
ingress marks it, so it takes the purchase fast path again."""
from __future__ import annotations

import pytest
from dramatiq import Message
from sqlalchemy import func, select

from db.models import InboxEvent
from tests.signing import platform_event
from tests.tasks.purchases.payments_support import checkout, store as store_stripe
from tests.tasks.inbox.test_inbox import store as store_platform
from workers import actors
from workers.queues import INBOX_QUEUE


def queued(runtime) -> list[Message]:
    """The inbox queue's messages, in order, left in place (the stub broker's queue)."""
    queue = runtime.broker.queues.get(INBOX_QUEUE)
    return [Message.decode(data) for data in list(queue.queue)] if queue is not None else []


def stored(runtime, platform: int) -> tuple[list[int], int, int]:
    """`platform` platform events, a paid course checkout and an unpaid one, in that order of arrival."""
    ids = [store_platform(runtime.db, "test.effect", {"n": n}) for n in range(platform)]
    paid = store_stripe(runtime.db, checkout(cs="cs_paid", pi="pi_paid"))
    unpaid = store_stripe(runtime.db, checkout(cs="cs_unpaid", pi="pi_unpaid", payment_status="unpaid"))
    return ids, paid, unpaid


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(actors, "SWEEP_BATCH", 10)


def test_messages_lost_with_the_queue_are_all_sent_again_in_one_run(runtime, small_batches):
    ids, paid, unpaid = stored(runtime, 25)
    assert queued(runtime) == []  # as after Redis restarted empty
    assert actors.resend_stale(0) == 27  # three batches of 10 in one run, not one batch per run
    messages = queued(runtime)
    assert [m.args[0] for m in messages] == [*ids, paid, unpaid]
    marks = {m.args[0]: m.kwargs for m in messages}
    assert marks[paid] == {"purchase": True}  # the path the ingress's message took
    assert marks[unpaid] == {} and all(marks[i] == {} for i in ids)
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).where(InboxEvent.enqueued_at.is_(None))) == 0


def test_while_the_queue_holds_the_rows_one_batch_is_sent_again_per_run(runtime, small_batches):
    ids, paid, unpaid = stored(runtime, 25)
    actors.enqueue_inbox([*ids, paid, unpaid])  # a backlog waiting its turn, nothing lost
    assert len(queued(runtime)) == 27
    assert actors.resend_stale(0) == 10  # the oldest batch only: they may just be queued
    assert [m.args[0] for m in queued(runtime)][27:] == ids[:10]


def test_only_what_the_queue_cannot_hold_is_sent_beyond_one_batch(runtime, small_batches):
    ids, paid, unpaid = stored(runtime, 25)
    actors.enqueue_inbox(ids[:5])  # five of the 27 still queued: at least 22 were lost
    assert actors.resend_stale(0) == 22


def test_purchases_among_marks_paid_course_checkouts_only(runtime):
    from tasks.purchases.fast_purchase import purchases_among

    ids, paid, unpaid = stored(runtime, 2)
    package = store_stripe(runtime.db, checkout(cs="cs_pkg", pi="pi_pkg", package="PK10"))
    with runtime.db.session_scope() as s:
        assert purchases_among(s, [*ids, paid, unpaid, package]) == {paid}
        assert purchases_among(s, []) == set()


def test_a_platform_event_payload_is_not_read_as_a_purchase(runtime):
    from tasks.purchases.fast_purchase import is_purchase

    event = platform_event("test.effect", {"n": 1})
    assert not is_purchase("platform", event["type"], event)


def test_when_the_broker_cannot_tell_its_depth_one_batch_is_sent_again(runtime, small_batches, monkeypatch):
    stored(runtime, 25)

    from workers import queue_depths

    def unreachable(broker, queues=None):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(queue_depths, "queue_depths", unreachable)
    assert actors.resend_stale(0) == 10
