"""The outbox relay against a real SMTP server (aiosmtpd) and a real HTTP platform receiver."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from db.enums import OutboxStatus
from db.models import OutboxMessage, TransitionLog
from db.types import utcnow
from tasks.messaging import delivery
from tasks.messaging.outbox import add_mail, add_platform_event
from tests.conftest import drain, make_settings
from tests.tasks.messaging.outbox_servers import platform_receiver, smtp_sink, wait_until  # noqa: F401  (fixtures)

STARTS = "2026-12-01T17:00:00+00:00"


@pytest.fixture
def settings(database, smtp_sink, platform_receiver):
    return make_settings(database.url, smtp_url=smtp_sink.url, platform_callback_url=platform_receiver.url,
                         admin_alert_emails=("ops@example.test", "lead@example.test"))


def _row(database, message_id: int) -> OutboxMessage:
    with database.session_scope() as s:
        return s.get(OutboxMessage, message_id)


def _deliver(database, settings, message_id, now=None, max_attempts=delivery.MAX_ATTEMPTS):
    """One attempt the way the actor makes it: claim, call outside a transaction, record."""
    with database.session_scope() as s:
        job = delivery.claim(session=s, message_id=message_id, settings=settings, now=now)
    if job is None:
        return None
    outcome = delivery.transmit(job, settings=settings, timeout=3)
    with database.session_scope() as s:
        return delivery.record(session=s, job=job, outcome=outcome, now=now, max_attempts=max_attempts)


MAILS = [
    ("enrollment_welcome", "ann@example.test",
     dict(student_name="Ann", course_title="Salsa Foundations", course_code="SFZ",
          steps=[{"label": "SFZ-1", "title": "Basics"}, {"label": "SFZ-2", "title": "Turns"}],
          bundle=[{"kind": "private_credit", "quantity": 2}]), ["SFZ-1", "SFZ-2", "2 x private lesson credits"]),
    ("booking_confirmed", "ann@example.test",
     dict(student_name="Ann", course_code="SFZ", step_label="SFZ-2", class_title="Turns",
          starts_at=STARTS, timezone="Europe/Berlin"), ["SFZ-2", "18:00 CET"]),
    ("booking_cancelled", "ann@example.test",
     dict(student_name="Ann", course_code="SFZ", step_label="SFZ-2", class_title="Turns",
          starts_at=STARTS, timezone="America/New_York"), ["SFZ-2", "12:00 EST"]),
    ("class_cancelled", "bob@example.test",
     dict(student_name="Bob", class_title="Turns", starts_at=STARTS, timezone="Asia/Tokyo", step_label="SFZ-3"),
     ["SFZ-3", "02:00 JST"]),
    ("step_reminder", "bob@example.test",
     dict(student_name="Bob", course_code="SFZ", step_label="SFZ-1", class_title="Basics", starts_at=STARTS,
          timezone="UTC"), ["SFZ-1", "17:00 UTC"]),
    ("dispute_alert", "@admins",
     dict(course_code="SFZ", student_id="stu_1", enrollment_id=5, dispute_id="dp_1", amount=12000, currency="usd"),
     ["dp_1", "120.00 USD", "stu_1"]),
    ("low_seat_alert", "@admins",
     dict(course_code="SFZ", step_label="SFZ-2", class_id="gc_2", class_title="Turns", starts_at=STARTS,
          timezone="Europe/Berlin", seats_left=2, capacity=10, threshold=3), ["SFZ-2", "2 left", "gc_2"]),
    ("stripe_drift_alert", "@admins",
     dict(listing_kind="course", listing_code="SFZ", stripe_object_id="price_1", object_type="price",
          event_id="evt_1", differences=[{"field": "unit_amount", "expected": "12000", "actual": "9900"}]),
     ["price_1", "unit_amount: we published 12000, Stripe now has 9900"]),
]


SUBJECTS = {"enrollment_welcome": "Welcome to Salsa Foundations", "booking_confirmed": "Booked: SFZ-2",
            "booking_cancelled": "Cancelled: SFZ-2", "class_cancelled": "Class cancelled: Turns",
            "step_reminder": "book SFZ-1", "dispute_alert": "Dispute opened on SFZ", "low_seat_alert": "SFZ-2",
            "stripe_drift_alert": "Stripe drift: price price_1 (SFZ)"}


def test_every_mail_reaches_the_smtp_server(database, runtime, worker, smtp_sink):
    with database.session_scope() as s:
        ids = [add_mail(session=s, template=t, recipient=r, context=c, dedupe_key=f"t:{t}").id
               for t, r, c, _ in MAILS]
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    wait_until(lambda: len(smtp_sink.messages) == len(MAILS))
    by_id = {m["Message-ID"]: (m, rcpts) for m, (_, rcpts) in zip(smtp_sink.messages, smtp_sink.envelopes)}
    for message_id, (template, recipient, _, needles) in zip(ids, MAILS):
        message, rcpts = by_id[f"<{_row(database, message_id).public_id}@coursepipe>"]
        expected = ["ops@example.test", "lead@example.test"] if recipient == "@admins" else [recipient]
        assert rcpts == expected, template
        assert message["From"] == "courses@example.test"
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        for needle in needles:
            assert needle in text, (template, needle, text)
        assert needles[0] in html
        assert SUBJECTS[template] in message["Subject"], message["Subject"]
        assert _row(database, message_id).status is OutboxStatus.SENT
    # a second relay sends nothing more
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    assert len(smtp_sink.messages) == len(MAILS)


def _event_id(database, message_id):
    return f"cp_out_{_row(database, message_id).public_id}"


def test_platform_events_are_signed_and_carry_the_outbox_public_id(database, runtime, worker, platform_receiver):
    with database.session_scope() as s:
        ids = [
            add_platform_event(session=s, type="enrollment.created", data={"enrollment_id": 5, "student_id": "stu_1"},
                               dedupe_key="enrollment.created:5").id,
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": "bk_1",
                               "reason": "no_active_enrollment"}, dedupe_key="booking.rejected:bk_1").id,
        ]
    event_ids = [_event_id(database, i) for i in ids]
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    wait_until(lambda: len(platform_receiver.events) == 2)
    assert platform_receiver.rejected == []
    received = {e["id"]: e for e in platform_receiver.events}
    assert set(received) == set(event_ids) and all(len(e) == len("cp_out_") + 32 for e in event_ids)
    first = received[event_ids[0]]
    assert first["type"] == "enrollment.created" and first["data"] == {"enrollment_id": 5, "student_id": "stu_1"}
    assert first["occurred_at"] and first["_headers"]["Platform-Event-Id"] == first["id"]
    assert first["created_at"] == first["occurred_at"] and first["sequence"] == 1
    assert received[event_ids[1]]["data"]["reason"] == "no_active_enrollment"
    assert all(_row(database, i).status is OutboxStatus.SENT for i in ids)


def test_a_wrong_secret_is_retried_and_the_event_delivered_once_the_secret_is_fixed(database, settings,
                                                                                   platform_receiver):
    """The receiver answers 400 (a secret being rotated on one side): the event is retried with backoff, as for
    any answer other than a 2xx, and goes out at the next attempt after the secret is fixed; no admin needed."""
    wrong = settings.with_(platform_webhook_secret="not-the-shared-secret")
    with database.session_scope() as s:
        message_id = add_platform_event(session=s, type="enrollment.revoked", data={"enrollment_id": 1},
                                        dedupe_key="x").id
    assert _deliver(database, wrong, message_id) is OutboxStatus.PENDING
    assert platform_receiver.events == [] and len(platform_receiver.rejected) == 1
    row = _row(database, message_id)
    assert "HTTP 400" in row.last_error and row.attempts == 1 and row.next_attempt_at > utcnow()
    assert _deliver(database, settings, message_id) is None  # not due yet
    assert _deliver(database, settings, message_id, now=utcnow() + timedelta(minutes=5)) is OutboxStatus.SENT
    assert [e["id"] for e in platform_receiver.events] == [_event_id(database, message_id)]


def test_an_admin_retry_of_a_message_being_sent_is_refused(database, settings):
    """A sender holds it (`sending`): made due again, a relay would send it a second time beside the sender."""
    import pytest

    from tasks.errors import TaskError

    with database.session_scope() as s:
        message_id = add_platform_event(session=s, type="enrollment.revoked", data={"enrollment_id": 1},
                                        dedupe_key="held").id
    with database.session_scope() as s:
        [job] = delivery.claim_due(session=s, settings=settings)
    with pytest.raises(TaskError, match="being sent"):
        with database.session_scope() as s:
            delivery.retry(session=s, message_id=message_id)
    assert _row(database, message_id).status is OutboxStatus.SENDING and job.id == message_id


def test_smtp_down_is_retried_with_backoff_and_delivered_once_when_it_returns(database, settings, smtp_sink):
    smtp_sink.stop()
    with database.session_scope() as s:
        message_id = add_mail(session=s, template="booking_confirmed", recipient="ann@example.test",
                              context={"step_label": "SFZ-1", "starts_at": STARTS}, dedupe_key="bk_1").id
    start = utcnow()
    assert _deliver(database, settings, message_id, now=start) is OutboxStatus.PENDING
    row = _row(database, message_id)
    assert row.attempts == 1 and "SMTP unreachable" in row.last_error
    assert row.next_attempt_at == start + delivery.backoff(1)
    # not due yet: nobody claims it
    assert _deliver(database, settings, message_id, now=start + timedelta(seconds=1)) is None
    with database.session_scope() as s:
        assert delivery.due_ids(session=s, settings=settings, now=start + timedelta(seconds=1)) == []
    second = row.next_attempt_at
    assert _deliver(database, settings, message_id, now=second) is OutboxStatus.PENDING
    row = _row(database, message_id)
    assert row.attempts == 2 and row.next_attempt_at == second + delivery.backoff(2)

    smtp_sink.start()
    with database.session_scope() as s:
        assert delivery.due_ids(session=s, settings=settings, now=row.next_attempt_at) == [message_id]
    assert _deliver(database, settings, message_id, now=row.next_attempt_at) is OutboxStatus.SENT
    assert _deliver(database, settings, message_id, now=row.next_attempt_at + timedelta(hours=2)) is None
    assert len(smtp_sink.messages) == 1
    assert smtp_sink.messages[0]["Message-ID"] == f"<{_row(database, message_id).public_id}@coursepipe>"
    with database.session_scope() as s:
        moves = s.scalars(select(TransitionLog.to_status).where(TransitionLog.entity == "outbox")
                          .order_by(TransitionLog.id)).all()
    assert moves == ["sending", "pending", "sending", "pending", "sending", "sent"]


def test_retries_exhausted_end_dead(database, settings, platform_receiver):
    platform_receiver.fail_next = 10
    with database.session_scope() as s:
        message_id = add_platform_event(session=s, type="enrollment.suspended", data={}, dedupe_key="s").id
    now = utcnow()
    statuses = []
    for _ in range(3):
        statuses.append(_deliver(database, settings, message_id, now=now, max_attempts=3))
        now += timedelta(hours=2)
    assert statuses == [OutboxStatus.PENDING, OutboxStatus.PENDING, OutboxStatus.DEAD]
    assert _deliver(database, settings, message_id, now=now) is None  # dead stays dead
    row = _row(database, message_id)
    assert row.attempts == 3 and "503" in row.last_error
    with database.session_scope() as s:
        assert [m.id for m in delivery.problems(session=s)] == [message_id]
        assert delivery.counts(session=s) == {"dead": 1}


def test_a_mail_held_up_past_its_expiry_ends_expired_apart_from_the_failures(database, runtime, worker, client,
                                                                             admin_headers, smtp_sink, platform_receiver):
    """A step reminder whose class had started by the time it could leave ended `dead`: listed and counted among
    the failures, and a bulk retry brought it back only to die again. It ends `expired`, which none of them
    takes for a failure; a callback that really failed stays dead beside it."""
    from tasks.errors import TaskError
    from tasks.reporting import ops

    platform_receiver.status_next = 410  # the platform refuses the callback on its last attempt: dead
    with database.session_scope() as s:
        late = add_mail(session=s, template="step_reminder", recipient="bob@example.test", dedupe_key="late",
                        context={"step_label": "SFZ-1", "starts_at": STARTS,
                                 "expires_at": (utcnow() - timedelta(minutes=1)).isoformat()}).id
        failed = add_platform_event(session=s, type="enrollment.created", data={"enrollment_id": 1}, dedupe_key="p")
        failed.attempts = delivery.MAX_ATTEMPTS - 1
        s.flush()
        failed = failed.id
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    row = _row(database, late)
    assert row.status.value == "expired" and row.last_error.startswith("expired at ") and row.attempts == 1
    assert smtp_sink.messages == []
    assert _row(database, failed).status is OutboxStatus.DEAD
    with database.session_scope() as s:
        assert s.scalars(select(TransitionLog.to_status).where(
            TransitionLog.entity == "outbox", TransitionLog.entity_id == str(late)).order_by(TransitionLog.id)).all() \
            == ["sending", "expired"]
        # the listings and counts of failures: the CLI's `outbox list`, the dashboard, the metrics' gauge
        assert [m.id for m in delivery.problems(session=s)] == [failed]
        assert [m.id for m in ops.dead_messages(session=s)] == [failed]
        assert ops.outbox_summary(session=s)["mail"]["dead"] == 0
        assert delivery.counts(session=s) == {"dead": 1, "expired": 1}
    # retry-dead leaves it alone; a retry of it alone is refused, saying why
    retried = client.post("/admin/outbox/retry-dead", json={"channel": "mail"}, headers=admin_headers)
    assert retried.status_code == 200 and retried.json == {"retried": 0, "ids": [], "remaining": 0}
    with pytest.raises(TaskError, match="expired unsent"):
        with database.session_scope() as s:
            delivery.retry(session=s, message_id=late)
    assert client.post("/admin/outbox/retry-dead", headers=admin_headers).json["ids"] == [failed]
    assert _row(database, late).status.value == "expired"


def test_a_dead_mail_whose_body_is_gone_is_not_retried(database, client, admin_headers):
    """A mail held back by a student's erasure ends dead ("student erased: not sent"), its body pruned; so does one
    retention pruned after it died. A bulk retry made them pending again only for them to die at once ("its body
    was pruned"); now it leaves them, and a retry of one is refused saying why. A dead mail with its body is
    retried as before."""
    from db.models import Student
    from tasks.errors import TaskError
    from tasks.lifecycle import erasure, retention

    with database.session_scope() as s:
        s.add(Student(id="stu_gone", email="gone@example.test", name="Gone"))
        held = add_mail(session=s, template="class_cancelled", recipient="gone@example.test", dedupe_key="held",
                        context={"class_title": "Turns"}).id
        old, kept = (add_mail(session=s, template="class_cancelled", recipient=f"{name}@example.test",
                              dedupe_key=name, context={"class_title": "Turns"}) for name in ("old", "kept"))
        for message in (old, kept):
            message.status, message.last_error = OutboxStatus.DEAD, "SMTP 550: mailbox unavailable"
        s.flush()
        retention.prune_mail(s, old, now=utcnow())
        old, kept = old.id, kept.id
    with database.session_scope() as s:
        erasure.erase_student(session=s, student_id="stu_gone")
    assert _row(database, held).status is OutboxStatus.DEAD
    retried = client.post("/admin/outbox/retry-dead", json={"channel": "mail"}, headers=admin_headers)
    assert retried.status_code == 200 and retried.json == {"retried": 1, "ids": [kept], "remaining": 0}
    for message_id in (held, old):
        with pytest.raises(TaskError, match="no body left to send"):
            with database.session_scope() as s:
                delivery.retry(session=s, message_id=message_id)
        assert _row(database, message_id).status is OutboxStatus.DEAD
    assert _row(database, kept).status is OutboxStatus.PENDING


def test_unconfigured_channels_hold_messages_and_lose_nothing(database, settings, smtp_sink, platform_receiver,
                                                              caplog):
    bare = settings.with_(smtp_url=None, platform_callback_url=None)
    with database.session_scope() as s:
        mail_id = add_mail(session=s, template="step_reminder", recipient="bob@example.test",
                           context={"step_label": "SFZ-1"}, dedupe_key="r").id
        event_id = add_platform_event(session=s, type="enrollment.created", data={}, dedupe_key="e").id
        admin_id = add_mail(session=s, template="dispute_alert", recipient="@admins", context={}, dedupe_key="d").id
    delivery._last_held_log.clear()
    with caplog.at_level("WARNING", logger="coursepipe.delivery"):
        with database.session_scope() as s:
            assert delivery.prepare_relay(session=s, settings=bare) == []
        for message_id in (mail_id, event_id):
            assert _deliver(database, bare, message_id) is None
    assert "SMTP_URL is not set" in caplog.text and "PLATFORM_CALLBACK_URL is not set" in caplog.text
    no_admins = settings.with_(admin_alert_emails=())
    assert _deliver(database, no_admins, admin_id) is None
    for message_id in (mail_id, event_id, admin_id):
        row = _row(database, message_id)
        assert row.status is OutboxStatus.PENDING and row.attempts == 0
    # configured later: everything leaves
    with database.session_scope() as s:
        assert sorted(delivery.prepare_relay(session=s, settings=settings)) == sorted([mail_id, event_id, admin_id])
    for message_id in (mail_id, event_id, admin_id):
        assert _deliver(database, settings, message_id) is OutboxStatus.SENT
    assert len(smtp_sink.messages) == 2 and len(platform_receiver.events) == 1


def test_a_stuck_sending_row_goes_back_to_pending_after_its_lease(database, settings, smtp_sink):
    with database.session_scope() as s:
        message_id = add_mail(session=s, template="class_cancelled", recipient="bob@example.test",
                              context={"class_title": "Turns"}, dedupe_key="c").id
    now = utcnow()
    with database.session_scope() as s:  # a worker claims it, then dies before the outcome
        lost_job = delivery.claim(session=s, message_id=message_id, settings=settings, now=now)
    assert lost_job is not None and _row(database, message_id).status is OutboxStatus.SENDING
    with database.session_scope() as s:
        assert delivery.prepare_relay(session=s, settings=settings, now=now + timedelta(seconds=20)) == []
    later = now + delivery.SENDING_LEASE + timedelta(seconds=1)
    with database.session_scope() as s:
        assert delivery.prepare_relay(session=s, settings=settings, now=later) == [message_id]
    assert _deliver(database, settings, message_id, now=later) is OutboxStatus.SENT
    # the lost worker's late failure report does not reopen the message
    with database.session_scope() as s:
        assert delivery.record(session=s, job=lost_job, outcome=delivery.Outcome(False, "late")) is OutboxStatus.SENT
    assert len(smtp_sink.messages) == 1


def test_a_claimed_message_is_not_claimed_twice(database, settings):
    with database.session_scope() as s:
        message_id = add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                              dedupe_key="twice").id
    with database.session_scope() as s:
        assert delivery.claim(session=s, message_id=message_id, settings=settings) is not None
    with database.session_scope() as s:
        assert delivery.claim(session=s, message_id=message_id, settings=settings) is None


@pytest.mark.postgres
def test_concurrent_claims_skip_the_locked_row(pg_database):
    settings = make_settings(pg_database.url, smtp_url="smtp://127.0.0.1:1", admin_alert_emails=("a@example.test",))
    with pg_database.session_scope() as s:
        message_id = add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                              dedupe_key="race").id
    holder = pg_database.sessions()
    try:
        first = delivery.claim(session=holder, message_id=message_id, settings=settings)  # locked, uncommitted
        results = []

        def other():
            with pg_database.session_scope() as s:
                results.append(delivery.claim(session=s, message_id=message_id, settings=settings))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=5)
        assert not thread.is_alive(), "a second claim blocked instead of skipping the locked row"
        assert first is not None and results == [None]
        holder.commit()
    finally:
        holder.close()


def test_smtp_url_forms():
    assert delivery.parse_smtp_url("smtp://127.0.0.1:1025") == delivery.SmtpTarget("127.0.0.1", 1025, "plain",
                                                                                    None, None)
    assert delivery.parse_smtp_url("smtps://u%40x:p@mail.test").port == 465
    target = delivery.parse_smtp_url("smtp://u:p@mail.test?starttls=true")
    assert (target.mode, target.port, target.username, target.password) == ("starttls", 587, "u", "p")
    with pytest.raises(ValueError):
        delivery.parse_smtp_url("http://mail.test")


def test_backoff_doubles_and_is_capped():
    assert [delivery.backoff(n).total_seconds() for n in (1, 2, 3)] == [30, 60, 120]
    assert delivery.backoff(30) == delivery.BACKOFF_CAP


def test_a_backlog_larger_than_one_batch_drains_through_chained_relays(database, runtime, worker, smtp_sink):
    count = delivery.CLAIM_BATCH * 2 + 3
    with database.session_scope() as s:
        for n in range(count):
            add_mail(session=s, template="step_reminder", recipient=f"s{n}@example.test",
                     context={"step_label": f"SFZ-{n}"}, dedupe_key=f"backlog:{n}")
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    wait_until(lambda: len(smtp_sink.messages) == count)
    with database.session_scope() as s:
        assert delivery.counts(session=s) == {"sent": count}


def test_held_rows_do_not_block_a_batch(database, settings, platform_receiver):
    no_smtp = settings.with_(smtp_url=None)
    with database.session_scope() as s:
        for n in range(delivery.CLAIM_BATCH + 2):
            add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                     dedupe_key=f"held:{n}")
        event_id = add_platform_event(session=s, type="enrollment.created", data={}, dedupe_key="go").id
    with database.session_scope() as s:
        jobs = delivery.claim_due(session=s, settings=no_smtp)
    assert [j.id for j in jobs] == [event_id]


@pytest.mark.postgres
def test_concurrent_relays_share_the_backlog(pg_database):
    settings = make_settings(pg_database.url, smtp_url="smtp://127.0.0.1:1")
    with pg_database.session_scope() as s:
        ids = [add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                        dedupe_key=f"share:{n}").id for n in range(15)]
    first_session = pg_database.sessions()
    try:
        first = delivery.claim_due(session=first_session, settings=settings)  # holds its row locks
        with pg_database.session_scope() as s:
            second = delivery.claim_due(session=s, settings=settings)
        first_session.commit()
    finally:
        first_session.close()
    assert len(first) == delivery.CLAIM_BATCH and len(second) == 15 - delivery.CLAIM_BATCH
    assert sorted(j.id for j in first + second) == ids


def test_a_late_success_after_the_row_went_dead_is_recorded_as_sent(database, settings):
    with database.session_scope() as s:
        message_id = add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                              dedupe_key="late").id
    now = utcnow()
    with database.session_scope() as s:
        slow = delivery.claim(session=s, message_id=message_id, settings=settings, now=now)
    later = now + delivery.SENDING_LEASE + timedelta(seconds=1)
    with database.session_scope() as s:  # the lease runs out; another attempt fails permanently
        delivery.release_stuck(session=s, now=later)
        other = delivery.claim(session=s, message_id=message_id, settings=settings, now=later)
    with database.session_scope() as s:
        assert delivery.record(session=s, job=other, outcome=delivery.Outcome(False, "550", permanent=True),
                               now=later) is OutboxStatus.DEAD
    with database.session_scope() as s:  # the slow first attempt reports that it got through
        assert delivery.record(session=s, job=slow, outcome=delivery.Outcome(True), now=later) is OutboxStatus.SENT
    with database.session_scope() as s:  # the timeline says what happened: dead, then sent, no made-up pending
        from db.models import TransitionLog

        moves = s.execute(select(TransitionLog.from_status, TransitionLog.to_status).where(
            TransitionLog.entity == "outbox", TransitionLog.entity_id == str(message_id))
            .order_by(TransitionLog.id)).all()
    assert [tuple(m) for m in moves][-1] == ("dead", "sent")


def test_held_rows_are_looked_up_only_as_often_as_they_are_logged(database, settings, caplog):
    import sqlalchemy as sa

    with database.session_scope() as s:
        add_mail(session=s, template="dispute_alert", recipient="@admins", context={}, dedupe_key="held-admins")
        for n in range(3):
            add_mail(session=s, template="step_reminder", recipient=f"s{n}@example.test", context={},
                     dedupe_key=f"due:{n}")
    no_admins = settings.with_(admin_alert_emails=())
    statements: list[str] = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        statements.append(" ".join(statement.split()))

    delivery._last_held_log.clear()
    sa.event.listen(database.engine, "before_cursor_execute", keep)
    try:
        with caplog.at_level("WARNING", logger="coursepipe.delivery"):
            for _ in range(3):  # three claims in a row: one look-up, one warning
                with database.session_scope() as s:
                    delivery.claim_due(session=s, settings=no_admins, limit=1)
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", keep)
    lookups = [q for q in statements if q.startswith("SELECT outbox_message.channel, outbox_message.recipient")]
    assert len(lookups) == 1
    assert caplog.text.count("held in the outbox: ADMIN_ALERT_EMAILS is empty") == 1
    with database.session_scope() as s:
        assert delivery.counts(session=s) == {"sending": 3, "pending": 1}  # the held one untouched
    statements.clear()
    sa.event.listen(database.engine, "before_cursor_execute", keep)
    try:  # everything configured: nothing can be held, nothing is looked up
        delivery._last_held_log.clear()
        with database.session_scope() as s:
            delivery.claim_due(session=s, settings=settings)
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", keep)
    assert statements and not [q for q in statements if q.startswith("SELECT outbox_message.channel, outbox_message.recipient")]


def test_a_backlog_of_mail_does_not_hold_the_platform_events_back(database, settings):
    with database.session_scope() as s:
        mail_ids = [add_mail(session=s, template="step_reminder", recipient=f"s{n}@example.test", context={},
                             dedupe_key=f"blast:{n}").id for n in range(15)]
        event_id = add_platform_event(session=s, type="enrollment.created", data={}, dedupe_key="late").id
    with database.session_scope() as s:  # each channel's share: the event, written last, is in the first batch
        jobs = delivery.claim_due(session=s, settings=settings, limit=10)
    assert [j.id for j in jobs] == [event_id] + mail_ids[:10]  # and it goes first
    with database.session_scope() as s:
        assert [j.id for j in delivery.claim_due(session=s, settings=settings, limit=10)] == mail_ids[10:]
