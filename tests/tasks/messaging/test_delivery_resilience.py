"""Push delivery that outlasts a receiver's outage: retries for at least 3 days with backoff, a dead
sender's messages retried within 60 s, bulk retry of dead messages, Standard Webhooks headers beside
Platform-Signature, and the catch-up feed holding the same events as the push."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from db.enums import OutboxStatus
from db.models import OutboxMessage, TransitionLog
from db.types import utcnow
from tasks.admins import audit
from tasks.messaging import delivery
from tasks.messaging import event_feed
from tasks.messaging.outbox import add_platform_event
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.tasks.messaging.outbox_servers import platform_receiver  # noqa: F401  (fixture)


@pytest.fixture
def settings(database, platform_receiver):  # noqa: F811
    return make_settings(database.url, platform_callback_url=platform_receiver.url)


def _events(database, n, prefix="e"):
    with database.session_scope() as s:
        return [add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"{prefix}{i}",
                                                                               "reason": "no_active_enrollment"},
                                   dedupe_key=f"{prefix}{i}").id for i in range(n)]


def _relay(database, settings, now):
    """One relay run at `now`, as workers.jobs.relay_outbox does it."""
    with database.session_scope() as s:
        jobs = delivery.claim_due(session=s, settings=settings, now=now, limit=100)
    for job in jobs:
        outcome = delivery.transmit(job, settings=settings)
        with database.session_scope() as s:
            delivery.record(session=s, job=job, outcome=outcome, now=now)
    return len(jobs)


def _statuses(database):
    with database.session_scope() as s:
        return [r.status for r in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def test_the_retry_schedule_spans_at_least_three_days():
    total = sum((delivery.backoff(n) for n in range(1, delivery.MAX_ATTEMPTS)), timedelta())
    assert total >= timedelta(days=3)
    assert delivery.backoff(1) == timedelta(seconds=30) and delivery.backoff(200) == timedelta(hours=1)


def test_a_receiver_down_for_two_hours_gets_every_event_once_and_the_feed_has_them_all(
        database, settings, platform_receiver):  # noqa: F811
    _events(database, 4)
    platform_receiver.fail_next = 10_000  # down
    start = utcnow()
    now, runs = start, 0
    while now < start + timedelta(hours=2):
        runs += _relay(database, settings, now) > 0
        now += timedelta(minutes=1)
    assert platform_receiver.events == [] and runs >= 8
    assert set(_statuses(database)) == {OutboxStatus.PENDING}  # nothing given up
    platform_receiver.fail_next = 0  # back
    while set(_statuses(database)) != {OutboxStatus.SENT} and now < start + timedelta(hours=4):
        _relay(database, settings, now)
        now += timedelta(minutes=1)
    assert now <= start + timedelta(hours=3, minutes=1)  # an attempt at most an hour after its return
    pushed = platform_receiver.events
    assert sorted(e["data"]["booking_id"] for e in pushed) == ["e0", "e1", "e2", "e3"]  # each once
    assert all(e["_headers"]["webhook-id"] == e["id"] for e in pushed)  # both signature schemes checked
    # the feed alone reconstructs every pushed event, byte for byte the same envelope
    with database.session_scope() as s:
        event_feed.assign_positions(session=s)
    with database.session_scope() as s:
        served = event_feed.read(session=s).events
    assert served == [{k: v for k, v in e.items() if k != "_headers"} for e in
                      sorted(pushed, key=lambda e: e["data"]["booking_id"])]


def test_a_message_dies_only_after_three_days_of_failures(database, settings, platform_receiver):  # noqa: F811
    [message_id] = _events(database, 1)
    platform_receiver.fail_next = 10_000
    now = start = utcnow()
    while _statuses(database) != [OutboxStatus.DEAD]:
        _relay(database, settings, now)
        with database.session_scope() as s:
            row = s.get(OutboxMessage, message_id)
            now = row.next_attempt_at if row.status is OutboxStatus.PENDING else now
        assert now < start + timedelta(days=4)
    assert now - start >= timedelta(days=3)


def test_a_message_held_by_a_crashed_sender_is_sent_within_60_seconds(database, settings, platform_receiver):  # noqa: F811
    _events(database, 3)
    start = utcnow()
    with database.session_scope() as s:
        crashed = delivery.claim_due(session=s, settings=settings, now=start)  # then the process dies
    assert len(crashed) == 3 and set(_statuses(database)) == {OutboxStatus.SENDING}
    assert _relay(database, settings, start + timedelta(seconds=30)) == 0  # the lease still holds
    assert _relay(database, settings, start + timedelta(seconds=60)) == 3
    assert set(_statuses(database)) == {OutboxStatus.SENT} and len(platform_receiver.events) == 3


def test_a_sender_renews_its_lease_and_leaves_a_message_whose_lease_ran_out(database, settings):
    _events(database, 2)
    start = utcnow()
    with database.session_scope() as s:
        first, second = delivery.claim_due(session=s, settings=settings, now=start)
    with database.session_scope() as s:
        assert delivery.renew_lease(session=s, job=first, now=start + timedelta(seconds=30))
        row = s.get(OutboxMessage, first.id)
        assert row.next_attempt_at == start + timedelta(seconds=30) + delivery.SENDING_LEASE
    # the second's lease ran out and another relay took it over: the first sender must not send it
    with database.session_scope() as s:
        retaken = delivery.claim_due(session=s, settings=settings, now=start + timedelta(seconds=50))
    assert [j.id for j in retaken] == [second.id]
    with database.session_scope() as s:
        assert not delivery.renew_lease(session=s, job=second, now=start + timedelta(seconds=50))


def test_bulk_retry_of_dead_messages_over_the_admin_api(client, runtime):
    ids = _events(runtime.db, 3)
    with runtime.db.session_scope() as s:
        for message_id in ids[:2]:
            row = s.get(OutboxMessage, message_id)
            row.status, row.attempts, row.last_error = OutboxStatus.DEAD, delivery.MAX_ATTEMPTS, "HTTP 404"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for channel in ("fax", [], {}, ["mail"], 1):  # a list or an object was a 500 (an unhashable set member)
        bad = client.post("/admin/outbox/retry-dead", json={"channel": channel}, headers=auth)
        assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_channel", (channel, bad.json)
    assert client.post("/admin/outbox/retry-dead").status_code == 401
    response = client.post("/admin/outbox/retry-dead", json={"channel": "platform"}, headers=auth)
    assert response.status_code == 200 and response.json == {"retried": 2, "ids": ids[:2], "remaining": 0}
    with runtime.db.session_scope() as s:
        assert [(r.status, r.attempts) for r in s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))] == \
            [(OutboxStatus.PENDING, 0)] * 3
        assert sorted(s.execute(select(TransitionLog.entity_id, TransitionLog.from_status, TransitionLog.to_status)
                                .where(TransitionLog.cause == "admin bulk retry")).all()) == \
            sorted((str(message_id), "dead", "pending") for message_id in ids[:2])  # each move on its history
    assert client.post("/admin/outbox/retry-dead", headers=auth).json == {"retried": 0, "ids": [], "remaining": 0}


def test_bulk_retry_takes_a_batch_a_call_oldest_first_and_says_how_many_are_left(client, runtime, monkeypatch):
    monkeypatch.setattr(delivery, "RETRY_DEAD_BATCH", 2)
    ids = _events(runtime.db, 5)
    with runtime.db.session_scope() as s:
        for message_id in ids:
            s.get(OutboxMessage, message_id).status = OutboxStatus.DEAD
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first = client.post("/admin/outbox/retry-dead", headers=auth).json
    assert first == {"retried": 2, "ids": ids[0:2], "remaining": 3}
    with runtime.db.session_scope() as s:  # the first one fails again meanwhile: the pass does not take it twice
        s.get(OutboxMessage, ids[0]).status = OutboxStatus.DEAD
    answers = [first]
    while answers[-1]["remaining"]:
        answers.append(client.post("/admin/outbox/retry-dead", json={"after": answers[-1]["ids"][-1]}, headers=auth).json)
    assert answers[1:] == [{"retried": 2, "ids": ids[2:4], "remaining": 1}, {"retried": 1, "ids": ids[4:5], "remaining": 0}]
    again = client.post("/admin/outbox/retry-dead", headers=auth).json  # a new pass starts from the oldest
    assert again == {"retried": 1, "ids": ids[:1], "remaining": 0}
    for bad in (-1, "7", True, 1.5):
        refused = client.post("/admin/outbox/retry-dead", json={"after": bad}, headers=auth)
        assert refused.status_code == 400 and refused.json["error"]["field"] == "after", bad
    with runtime.db.session_scope() as s:
        assert {r.status for r in s.scalars(select(OutboxMessage))} == {OutboxStatus.PENDING}
        assert [e.details for e in audit.entries(session=s) if e.action == "outbox.retry_dead"][::-1] == [
            {"retried": 2, "remaining": 3}, {"retried": 2, "remaining": 1}, {"retried": 1}, {"retried": 1}]


def _enrollment_events(database, n):
    """n platform events about one enrollment (sequences 1..n)."""
    from tests import factories

    with database.session_scope() as s:
        enrollment = factories.enrollment(s, factories.student(s), factories.program(s), with_progress=False)
        return [add_platform_event(session=s, type="enrollment.completed",
                                   data={"enrollment_id": enrollment.id, "n": i},
                                   dedupe_key=f"order:{i}", enrollment_id=enrollment.id).id for i in range(n)]


def test_an_enrollments_events_reach_the_platform_in_sequence_when_a_send_fails(
        database, settings, platform_receiver):  # noqa: F811
    ids = _enrollment_events(database, 3)
    platform_receiver.fail_next = 1
    now = utcnow()
    assert _relay(database, settings, now) == 1  # the first only: the others wait their turn
    assert platform_receiver.events == []
    with database.session_scope() as s:  # the one waiting cannot be sent on its own either
        assert delivery.claim(session=s, message_id=ids[1], settings=settings, now=now) is None
    now += timedelta(minutes=1)  # past the first's backoff
    while _relay(database, settings, now):
        pass
    assert [e["sequence"] for e in platform_receiver.events] == [1, 2, 3]
    assert _statuses(database) == [OutboxStatus.SENT] * 3


def test_a_dead_event_holds_its_enrollments_later_events_until_it_is_retried(
        database, settings, platform_receiver):  # noqa: F811
    ids = _enrollment_events(database, 2)
    with database.session_scope() as s:
        s.get(OutboxMessage, ids[0]).status = OutboxStatus.DEAD
    others = _events(database, 1)  # an event about no enrollment is never held
    now = utcnow()
    while _relay(database, settings, now):
        pass
    assert [e["data"].get("booking_id") for e in platform_receiver.events] == ["e0"]
    with database.session_scope() as s:
        assert delivery.retry_dead(session=s, channel=None) == [ids[0]]
    now = utcnow()
    while _relay(database, settings, now):
        pass
    assert [e["sequence"] for e in platform_receiver.events[1:]] == [1, 2]
    assert others and _statuses(database) == [OutboxStatus.SENT] * 3


def test_a_dead_event_already_overtaken_holds_nothing_back(database, settings, platform_receiver):  # noqa: F811
    """Delivered past before the rule (the platform applied the later one and drops the dead one anyway):
    waiting for it would only stop the enrollment's events for good."""
    ids = _enrollment_events(database, 3)
    with database.session_scope() as s:
        s.get(OutboxMessage, ids[0]).status = OutboxStatus.DEAD
        s.get(OutboxMessage, ids[1]).status = OutboxStatus.SENT
    now = utcnow()
    while _relay(database, settings, now):
        pass
    assert [e["sequence"] for e in platform_receiver.events] == [3]
