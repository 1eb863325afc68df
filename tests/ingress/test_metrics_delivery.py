"""coursepipe_outbox_deliveries_total: the relay counts each attempt's outcome (real SMTP, real HTTP receiver)."""
from __future__ import annotations

import pytest

from tasks.messaging import delivery
from tasks.messaging.outbox import add_mail, add_platform_event
from tests.conftest import drain, make_settings
from tests.ingress.test_metrics import scrape, value
from tests.tasks.messaging.outbox_servers import platform_receiver, smtp_sink, wait_until  # noqa: F401  (fixtures)


@pytest.fixture
def settings(database, smtp_sink, platform_receiver):
    return make_settings(database.url, smtp_url=smtp_sink.url, platform_callback_url=platform_receiver.url)


def test_deliveries_are_counted_by_channel_and_result(client, runtime, worker, smtp_sink, platform_receiver):
    before = scrape(client)
    platform_receiver.status_next = 410  # the platform refuses the first callback, on its last attempt: dead
    with runtime.db.session_scope() as s:
        add_mail(session=s, template="enrollment_welcome", recipient="stu@example.test", dedupe_key="m1",
                 context={"student_name": "S", "course_title": "SFZ", "course_code": "SFZ", "steps": [], "bundle": []})
        for n in (1, 2):
            add_platform_event(session=s, type="enrollment.created", data={"enrollment_id": n},
                               dedupe_key=f"p{n}").attempts = delivery.MAX_ATTEMPTS - 1
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    wait_until(lambda: len(smtp_sink.messages) == 1 and len(platform_receiver.events) == 1)
    after = scrape(client)

    def moved(**labels):
        return value(after, "coursepipe_outbox_deliveries_total", **labels) - \
            value(before, "coursepipe_outbox_deliveries_total", **labels)

    assert moved(channel="mail", result="sent") == 1
    assert moved(channel="platform", result="sent") == 1
    assert moved(channel="platform", result="dead") == 1
    assert value(after, "coursepipe_outbox_messages", channel="platform", status="dead") == 1


def test_a_platform_refusal_is_counted_as_a_retry(client, runtime, worker, platform_receiver):
    before = scrape(client)
    platform_receiver.status_next = 410  # a 4xx too is tried again, for the whole 3 days
    with runtime.db.session_scope() as s:
        add_platform_event(session=s, type="enrollment.created", data={"enrollment_id": 1}, dedupe_key="p1")
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    after = scrape(client)
    assert value(after, "coursepipe_outbox_deliveries_total", channel="platform", result="retry") - \
        value(before, "coursepipe_outbox_deliveries_total", channel="platform", result="retry") == 1
    assert value(after, "coursepipe_outbox_messages", channel="platform", status="pending") == 1
    assert platform_receiver.events == []


def test_a_mail_held_up_past_its_expiry_is_counted_as_expired_not_dead(client, runtime, worker, smtp_sink):
    """An expired reminder was counted as a `dead` delivery and kept the dead gauge (and its alert) above 0."""
    from datetime import timedelta

    from db.types import utcnow

    before = scrape(client)
    with runtime.db.session_scope() as s:
        add_mail(session=s, template="step_reminder", recipient="stu@example.test", dedupe_key="late",
                 context={"step_label": "SFZ-1", "starts_at": utcnow().isoformat(),
                          "expires_at": (utcnow() - timedelta(minutes=1)).isoformat()})
    runtime.actors["relay_outbox"].send()
    drain(runtime)
    after = scrape(client)

    def moved(**labels):
        return value(after, "coursepipe_outbox_deliveries_total", **labels) - \
            value(before, "coursepipe_outbox_deliveries_total", **labels)

    assert moved(channel="mail", result="expired") == 1
    assert moved(channel="mail", result="dead") == 0
    assert value(after, "coursepipe_outbox_messages", channel="mail", status="dead") == 0
    assert smtp_sink.messages == []
