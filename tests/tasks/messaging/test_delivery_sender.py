"""A relay's batch through one `Sender`: the SMTP session and the platform connection are kept from one
message to the next, a kept connection the far side dropped is replaced, outcomes are recorded together,
and a backlog is drained by more than one relay."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from db.enums import OutboxChannel, OutboxStatus
from db.models import OutboxMessage, TransitionLog
from tasks.messaging import delivery
from tasks.messaging.outbox import add_mail, add_platform_event
from tests.conftest import make_settings
from tests.tasks.messaging.outbox_servers import platform_receiver, smtp_sink  # noqa: F401  (fixtures)
from workers.queues import OUTBOX_QUEUE

CONTEXT = dict(student_name="Ann", course_code="SFZ", step_label="SFZ-1", class_title="Salsa 1",
               starts_at="2026-12-01T18:00:00+00:00", timezone="UTC", booking_id="bk_1", class_id="gc_1")


@pytest.fixture
def settings(database, smtp_sink, platform_receiver):  # noqa: F811
    return make_settings(database.url, smtp_url=smtp_sink.url, platform_callback_url=platform_receiver.url)


def claimed(database, settings, *, mails: int = 0, events: int = 0) -> list[delivery.Job]:
    with database.session_scope() as s:
        for n in range(mails):
            add_mail(session=s, template="booking_confirmed", recipient=f"s{n}@example.test", context=CONTEXT,
                     dedupe_key=f"m{n}")
        for n in range(events):
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}", "reason": "no_credit"},
                               dedupe_key=f"e{n}")
    with database.session_scope() as s:
        return delivery.claim_due(session=s, settings=settings, limit=mails + events)


def test_the_mails_of_a_batch_go_through_one_smtp_session(database, settings, smtp_sink):  # noqa: F811
    jobs = claimed(database, settings, mails=3)
    with delivery.Sender(settings, timeout=5) as sender:
        assert [sender.send(job).ok for job in jobs] == [True] * 3
    assert len(smtp_sink.messages) == 3 and len(set(smtp_sink.peers)) == 1
    assert sorted(m["To"] for m in smtp_sink.messages) == ["s0@example.test", "s1@example.test", "s2@example.test"]


def test_the_events_of_a_batch_go_over_one_connection(database, settings, platform_receiver):  # noqa: F811
    jobs = claimed(database, settings, events=3)
    with delivery.Sender(settings, timeout=5) as sender:
        assert [sender.send(job).ok for job in jobs] == [True] * 3
    assert len(platform_receiver.events) == 3 and len(set(platform_receiver.peers)) == 1
    assert platform_receiver.rejected == []  # every one signed


def test_a_kept_smtp_session_the_server_dropped_is_replaced_for_the_next_mail(database, settings, smtp_sink):  # noqa: F811
    first, second = claimed(database, settings, mails=2)
    with delivery.Sender(settings, timeout=5) as sender:
        assert sender.send(first).ok
        smtp_sink.stop()  # the server goes away with our session open, and comes back
        smtp_sink.start()
        assert sender.send(second).ok
    assert len(smtp_sink.messages) == 2 and len(set(smtp_sink.peers)) == 2


def test_after_a_failure_the_next_mail_starts_a_new_session(database, settings, smtp_sink):  # noqa: F811
    first, second = claimed(database, settings, mails=2)
    with delivery.Sender(settings, timeout=5) as sender:
        smtp_sink.stop()
        down = sender.send(first)
        assert not down.ok and not down.permanent and "SMTP unreachable" in down.error
        smtp_sink.start()
        assert sender.send(second).ok


def test_a_redirect_is_not_followed(database, settings, platform_receiver):  # noqa: F811
    job, = claimed(database, settings, events=1)
    platform_receiver.status_next = 307
    outcome = delivery.transmit(job, settings=settings, timeout=5)
    assert not outcome.ok and not outcome.permanent and outcome.error == "platform answered HTTP 307"
    assert platform_receiver.events == []


def test_an_unreachable_platform_is_a_retried_failure_that_names_the_cause(database, settings):
    job, = claimed(database, settings, events=1)
    from tests.tasks.messaging.outbox_servers import free_port

    closed = make_settings(database.url, platform_callback_url=f"http://127.0.0.1:{free_port()}/events")
    outcome = delivery.transmit(job, settings=closed, timeout=5)
    assert not outcome.ok and not outcome.permanent
    assert outcome.error.startswith("platform unreachable: ") and "refused" in outcome.error.lower()


def test_record_all_writes_a_batch_of_outcomes_in_the_order_given(database, settings):
    sent, failed, gone = claimed(database, settings, events=3)
    with database.session_scope() as s:
        s.delete(s.get(OutboxMessage, gone.id))
    with database.session_scope() as s:
        statuses = delivery.record_all(session=s, results=[
            (failed, delivery.Outcome(False, "platform answered HTTP 503")), (gone, delivery.Outcome(True)),
            (sent, delivery.Outcome(True))])
    assert statuses == [OutboxStatus.PENDING, None, OutboxStatus.SENT]
    with database.session_scope() as s:
        assert s.get(OutboxMessage, sent.id).sent_at is not None
        assert s.get(OutboxMessage, failed.id).last_error == "platform answered HTTP 503"


def outbox_messages(runtime) -> list[str]:
    return [message.actor_name for message in queued(runtime)]


def queued(runtime) -> list:
    from dramatiq import Message

    queue = runtime.broker.queues.get(OUTBOX_QUEUE)
    return [Message.decode(data) for data in list(queue.queue)] if queue is not None else []


def test_a_batch_doubles_while_it_goes_out_whole_and_quick_and_starts_over_otherwise():
    quick = dict(seconds=delivery.RECORD_AFTER_SECONDS / 10)
    size, sizes = delivery.CLAIM_BATCH, []
    while size < delivery.CLAIM_BATCH_MAX:
        size = delivery.next_batch(size, claimed=size, delivered=size, **quick)
        sizes.append(size)
    assert sizes[0] == 2 * delivery.CLAIM_BATCH and sizes[-1] == delivery.CLAIM_BATCH_MAX
    assert delivery.next_batch(delivery.CLAIM_BATCH_MAX, claimed=50, delivered=50, **quick) == delivery.CLAIM_BATCH_MAX
    assert delivery.next_batch(40, claimed=40, delivered=39, **quick) == delivery.CLAIM_BATCH  # a failure
    assert delivery.next_batch(40, claimed=40, delivered=40,
                               seconds=delivery.RECORD_AFTER_SECONDS + 0.1) == delivery.CLAIM_BATCH  # slow


def test_a_relay_claims_the_batch_its_predecessor_chose_and_passes_on_the_next(runtime, database, settings,
                                                                               platform_receiver, monkeypatch):  # noqa: F811
    from workers import jobs

    monkeypatch.setattr(delivery, "RECORD_AFTER_SECONDS", 60)  # every batch counts as quick, on any machine

    bigger = 2 * delivery.CLAIM_BATCH
    with database.session_scope() as s:
        for n in range(bigger + delivery.CLAIM_BATCH_MAX + 5):
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}"}, dedupe_key=f"e{n}")
    jobs.relay_outbox(batch=bigger)
    assert len(platform_receiver.events) == bigger
    follow_ups = queued(runtime)
    assert follow_ups and {m.kwargs.get("batch") for m in follow_ups} == {2 * bigger}  # the receiver is quick
    jobs.relay_outbox(batch=10 * delivery.CLAIM_BATCH_MAX)  # a size out of bounds is held to them
    assert len(platform_receiver.events) == bigger + delivery.CLAIM_BATCH_MAX
    with database.session_scope() as s:  # every claimed row's move to sending and to sent is on its history
        moves = s.execute(select(TransitionLog.from_status, TransitionLog.to_status, func.count())
                          .where(TransitionLog.entity == "outbox").group_by(TransitionLog.from_status,
                                                                            TransitionLog.to_status)).all()
    sent = bigger + delivery.CLAIM_BATCH_MAX
    assert sorted(moves) == [("pending", "sending", sent), ("sending", "sent", sent)]


def test_a_backlog_starts_one_more_relay_until_enough_run(runtime, database, settings, platform_receiver):  # noqa: F811
    from workers import jobs

    with database.session_scope() as s:
        for n in range(3 * delivery.CLAIM_BATCH):
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}"},
                               dedupe_key=f"e{n}")
    jobs.relay_outbox()  # a full batch delivered, the queue empty: the follow-up and one more relay
    assert outbox_messages(runtime) == ["relay_outbox", "relay_outbox"]
    assert len(platform_receiver.events) == delivery.CLAIM_BATCH
    for _ in range(jobs.RELAY_CONCURRENCY):
        runtime.actors["relay_outbox"].send()  # as many queued as may run: only the follow-up is added
    before = len(outbox_messages(runtime))
    jobs.relay_outbox()
    assert len(outbox_messages(runtime)) == before + 1
    with database.session_scope() as s:
        assert s.query(OutboxMessage).filter(OutboxMessage.channel == OutboxChannel.PLATFORM,
                                             OutboxMessage.status == OutboxStatus.SENT).count() == 2 * delivery.CLAIM_BATCH


def test_an_event_whose_turn_came_with_this_batch_starts_a_relay_of_the_platforms_events(
        runtime, database, settings, platform_receiver):  # noqa: F811
    from tests import factories
    from workers import jobs

    with database.session_scope() as s:
        enrollment = factories.enrollment(s, factories.student(s), factories.program(s), with_progress=False)
        for n in range(2):  # the second waits for the first to be sent
            add_platform_event(session=s, type="enrollment.completed", data={"n": n}, dedupe_key=f"turn{n}",
                               enrollment_id=enrollment.id)
    jobs.relay_outbox()
    assert [e["sequence"] for e in platform_receiver.events] == [1]
    assert [m.kwargs.get("channel") for m in queued(runtime)] == ["platform"]
    jobs.relay_outbox(**queued(runtime)[0].kwargs)
    assert [e["sequence"] for e in platform_receiver.events] == [1, 2]


def test_the_callback_session_takes_the_proxy_and_ca_settings_from_the_environment_once(monkeypatch):
    for name in ("https_proxy", "no_proxy", "all_proxy", "ALL_PROXY", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)  # the lowercase names win over the ones set here
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.test:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/our-ca.pem")
    proxied = delivery._http_session("https://platform.example.test/coursepipe")
    assert proxied.proxies.get("https") == "http://proxy.example.test:3128"
    assert proxied.verify == "/etc/ssl/our-ca.pem" and proxied.trust_env is False
    assert "https" not in delivery._http_session("https://internal.example.test/coursepipe").proxies


def test_a_sender_name_and_a_recipient_beyond_ascii_go_through_smtp(database, smtp_sink):  # noqa: F811
    settings = make_settings(database.url, smtp_url=smtp_sink.url, mail_from="Studio Café <courses@example.test>")
    with database.session_scope() as s:
        add_mail(session=s, template="booking_confirmed", recipient="ann@example.test", context=CONTEXT, dedupe_key="a")
        add_mail(session=s, template="booking_confirmed", recipient="zoë@exämple.test", context=CONTEXT, dedupe_key="z")
    with database.session_scope() as s:
        jobs = delivery.claim_due(session=s, settings=settings)
    with delivery.Sender(settings, timeout=5) as sender:
        assert [sender.send(job) for job in jobs] == [delivery.Outcome(True)] * 2
    assert [rcpts for _, rcpts in smtp_sink.envelopes] == [["ann@example.test"], ["zoë@exämple.test"]]
    assert {mail_from for mail_from, _ in smtp_sink.envelopes} == {"courses@example.test"}  # the bare address
    ascii_envelope, international = smtp_sink.messages
    assert ascii_envelope["From"].addresses[0].display_name == "Studio Café"  # an encoded word
    # sent with SMTPUTF8, its headers are UTF-8 as they stand (the sink's parser reads them as raw bytes)
    def raw(header):
        return str(international[header]).encode("utf-8", "surrogateescape").decode("utf-8")
    assert raw("From") == "Studio Café <courses@example.test>" and raw("To") == "zoë@exämple.test"


def test_a_slow_batch_records_each_outcome_before_the_next_send(runtime, database, settings, monkeypatch):
    from workers import jobs

    calls = []
    record_all = delivery.record_all
    monkeypatch.setattr(delivery, "record_all", lambda **kw: calls.append(len(kw["results"])) or record_all(**kw))

    def due(prefix: str) -> None:
        with database.session_scope() as s:
            for n in range(3):
                add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"{prefix}{n}"},
                                   dedupe_key=f"{prefix}{n}")

    due("quick")
    jobs.relay_outbox()
    assert calls == [3]  # a quick batch: one transaction for its outcomes
    calls.clear()
    due("slow")
    monkeypatch.setattr(delivery, "RECORD_AFTER_SECONDS", -1)  # as if every send were slow
    jobs.relay_outbox()
    assert calls == [1, 1, 1]  # each outcome recorded before the next send


def test_a_big_batch_that_turns_slow_hands_back_what_it_would_send_late(runtime, database, settings,
                                                                        platform_receiver, monkeypatch):  # noqa: F811
    from workers import jobs

    claimed = 25
    with database.session_scope() as s:
        for n in range(claimed):
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}"}, dedupe_key=f"e{n}")
    monkeypatch.setattr(delivery, "RECORD_AFTER_SECONDS", -1)  # as if the receiver had turned slow at once
    jobs.relay_outbox(batch=claimed)
    assert len(platform_receiver.events) == delivery.CLAIM_BATCH  # what a small batch holds went out
    with database.session_scope() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        handed = [r for r in rows if r.status is OutboxStatus.PENDING]
        assert len(handed) == claimed - delivery.CLAIM_BATCH
        assert all(r.attempts == 0 for r in handed)  # no attempt was made: none is counted
        assert s.scalar(select(func.count()).select_from(TransitionLog).where(
            TransitionLog.cause == "handed back unsent: slow batch")) == len(handed)
    assert all("batch" not in m.kwargs for m in queued(runtime))  # the follow-ups take small batches


def test_the_last_outcome_given_for_a_row_is_the_one_written(database, settings):
    [job] = claimed(database, settings, events=1)
    with database.session_scope() as s:
        statuses = delivery.record_all(session=s, results=[(job, delivery.Outcome(False, "SMTP 421")),
                                                           (job, delivery.Outcome(True))])
    assert statuses == [OutboxStatus.PENDING, OutboxStatus.SENT]
    with database.session_scope() as s:
        row = s.get(OutboxMessage, job.id)
        assert row.status is OutboxStatus.SENT and row.last_error is None and row.sent_at is not None


def test_a_full_share_of_platform_events_goes_on_in_a_relay_of_its_own_before_the_mail(
        runtime, database, settings, platform_receiver, smtp_sink, monkeypatch):  # noqa: F811
    from workers import jobs

    monkeypatch.setattr(delivery, "RECORD_AFTER_SECONDS", 60)  # every batch counts as quick, on any machine
    more = delivery.CLAIM_BATCH + 3
    with database.session_scope() as s:
        for n in range(more):
            add_mail(session=s, template="booking_confirmed", recipient=f"s{n}@example.test", context=CONTEXT,
                     dedupe_key=f"m{n}")
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}"}, dedupe_key=f"e{n}")
    jobs.relay_outbox()  # a share of each channel
    assert len(platform_receiver.events) == delivery.CLAIM_BATCH and len(smtp_sink.messages) == delivery.CLAIM_BATCH
    channels = [m.kwargs.get("channel") for m in queued(runtime)]
    assert channels[0] == "platform" and set(channels) == {"platform", "mail"}  # started before the mail went
    jobs.relay_outbox(channel="platform")  # a relay of platform events takes theirs alone
    assert len(platform_receiver.events) == more and len(smtp_sink.messages) == delivery.CLAIM_BATCH
    jobs.relay_outbox(channel="mail")
    assert len(smtp_sink.messages) == more



def test_a_relay_for_a_channel_it_does_not_know_relays_every_channel(runtime, database, settings, platform_receiver,
                                                                     smtp_sink, caplog):  # noqa: F811
    from workers import jobs

    with database.session_scope() as s:
        add_mail(session=s, template="booking_confirmed", recipient="s@example.test", context=CONTEXT, dedupe_key="m")
        add_platform_event(session=s, type="booking.rejected", data={"booking_id": "bk_1"}, dedupe_key="e")
    jobs.relay_outbox(channel="fax")
    assert len(platform_receiver.events) == 1 and len(smtp_sink.messages) == 1
    assert "unknown channel 'fax'" in caplog.text

def test_messages_handed_back_are_left_to_a_relay_started_at_once(runtime, database, settings, platform_receiver,
                                                                  smtp_sink, monkeypatch):  # noqa: F811
    from workers import jobs

    with database.session_scope() as s:
        for n in range(delivery.CLAIM_BATCH - 1):  # shares short of full: no follow-up for a full one
            add_mail(session=s, template="booking_confirmed", recipient=f"s{n}@example.test", context=CONTEXT,
                     dedupe_key=f"m{n}")
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}"}, dedupe_key=f"e{n}")
    monkeypatch.setattr(delivery, "RECORD_AFTER_SECONDS", -1)  # slow from the start: the tail goes back
    jobs.relay_outbox()
    with database.session_scope() as s:
        handed = s.scalars(select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.PENDING)).all()
    assert handed and {m.channel for m in handed} == {OutboxChannel.MAIL}
    assert outbox_messages(runtime)[:1] == ["relay_outbox"]  # a relay comes for them now, not at the next tick


def test_a_full_share_that_all_failed_records_the_rest_of_the_batch_together(runtime, database, settings,
                                                                            smtp_sink, monkeypatch):  # noqa: F811
    from workers import jobs

    calls = []
    record_all = delivery.record_all
    monkeypatch.setattr(delivery, "RECORD_AFTER_SECONDS", 60)
    monkeypatch.setattr(delivery, "record_all", lambda **kw: calls.append(len(kw["results"])) or record_all(**kw))
    unreachable = settings.with_(platform_callback_url="http://127.0.0.1:1/coursepipe")
    monkeypatch.setattr(runtime, "settings", unreachable)
    with database.session_scope() as s:
        for n in range(delivery.CLAIM_BATCH):
            add_mail(session=s, template="booking_confirmed", recipient=f"s{n}@example.test", context=CONTEXT,
                     dedupe_key=f"m{n}")
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{n}"}, dedupe_key=f"e{n}")
    jobs.relay_outbox()
    assert calls == [delivery.CLAIM_BATCH, delivery.CLAIM_BATCH]  # the platform's share, then the mail together
    assert all(m.kwargs.get("channel") != "platform" for m in queued(runtime))  # no chain for a share that failed


def test_a_retried_alert_whose_body_retention_pruned_is_not_sent_blank(database, smtp_sink):  # noqa: F811
    """Retention keeps an alert's @admins recipient; retried after its body was pruned, it went out with every
    field "-". A bulk retry now leaves it (nothing to send); one made due by a version before that fails for
    good, saying why."""
    from datetime import timedelta

    from db.types import utcnow
    from tasks.lifecycle import retention
    from tasks.messaging.outbox import ADMINS

    settings = make_settings(database.url, smtp_url=smtp_sink.url, admin_alert_emails="ops@example.test")
    with database.session_scope() as s:
        alert = add_mail(session=s, template="dispute_alert", recipient=ADMINS, context={"dispute_id": "dp_1"},
                         dedupe_key="dispute_alert:dp_1")
        alert.status, alert.created_at = OutboxStatus.DEAD, utcnow() - timedelta(days=401)
    with database.session_scope() as s:
        assert retention.prune(session=s, retention_days=400).mails == 1
        assert s.scalar(select(OutboxMessage.recipient)) == ADMINS
        assert delivery.retry_dead(session=s) == []
        s.execute(update(OutboxMessage).values(status=OutboxStatus.PENDING))  # retried by an earlier version
    with database.session_scope() as s:
        (job,) = delivery.claim_due(session=s, settings=settings, limit=1)
    with delivery.Sender(settings, timeout=5) as sender:
        outcome = sender.send(job)
    assert not outcome.ok and outcome.permanent and "pruned by retention" in outcome.error
    assert smtp_sink.messages == []


def test_a_mail_held_up_past_its_expiry_is_not_sent(database, settings, smtp_sink):  # noqa: F811
    """A step reminder queued while SMTP was down for days arrived after its class had started."""
    from datetime import timedelta

    from db.types import utcnow

    with database.session_scope() as s:
        for n, expires in enumerate((utcnow() - timedelta(minutes=1), utcnow() + timedelta(days=1))):
            add_mail(session=s, template="step_reminder", recipient=f"s{n}@example.test",
                     context={**CONTEXT, "expires_at": expires.isoformat()}, dedupe_key=f"r{n}")
    with database.session_scope() as s:
        late, timely = delivery.claim_due(session=s, settings=settings, limit=2)
    with delivery.Sender(settings, timeout=5) as sender:
        outcome = sender.send(late)
        assert not outcome.ok and outcome.expired and not outcome.permanent and outcome.error.startswith("expired at ")
        assert sender.send(timely).ok
    assert [m["To"] for m in smtp_sink.messages] == ["s1@example.test"]
