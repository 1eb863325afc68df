"""The front door: verify, store once, enqueue after commit; every bad input a 400 that stores nothing."""
from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from db.enums import InboxStatus
from db.models import InboxEvent
from tests.signing import platform_event, platform_headers, stripe_event, stripe_headers


def _count(runtime) -> int:
    with runtime.db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(InboxEvent))


def _error(response):
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


FIXTURE_EVENTS = ["checkout.session.completed", "charge.refunded", "charge.dispute.created",
                  "charge.dispute.closed", "product.updated", "price.updated", "customer.created"]


@pytest.mark.parametrize("name", FIXTURE_EVENTS)
def test_stripe_fixture_events_are_accepted_and_stored_once(client, runtime, name):
    body = json.dumps(stripe_event(name))
    first = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert first.status_code == 200 and first.get_json() == {"received": True, "duplicate": False}
    again = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert again.status_code == 200 and again.get_json() == {"received": True, "duplicate": True}
    assert _count(runtime) == 1
    with runtime.db.session_scope() as s:
        row = s.scalar(select(InboxEvent))
        assert row.type == name and row.source.value == "stripe" and row.status == InboxStatus.PENDING
        assert row.payload["id"] == json.loads(body)["id"]
    # the message carries the inbox row id, not the payload
    messages = runtime.broker.queues["inbox"]
    assert messages.qsize() == 1
    message = messages.get_nowait()
    import dramatiq

    assert dramatiq.Message.decode(message).args == (row.id,)


@pytest.mark.parametrize(("changes", "marked"), [
    ({"metadata": {"kind": "course", "course_code": "YOGA"}, "client_reference_id": "stu_1"}, True),
    ({"metadata": {"kind": "course", "course_code": "YOGA"}, "client_reference_id": "stu_1",
      "payment_status": "unpaid"}, False),
    ({"metadata": {"kind": "package", "package_code": "P10"}, "client_reference_id": "stu_1"}, False),
    ({}, False),  # the fixture as Stripe sent it: no course in its metadata
])
def test_a_new_paid_course_purchase_is_marked_in_its_message(client, runtime, changes, marked):
    import dramatiq

    body = json.dumps(stripe_event("checkout.session.completed", **changes))
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    message = dramatiq.Message.decode(runtime.broker.queues["inbox"].get_nowait())
    # the worker runs a marked purchase on the fast path without an ORM session (inbox.run_message)
    assert message.kwargs == ({"purchase": True} if marked else {})


def _signed(event: dict) -> tuple[str, dict]:
    body = json.dumps(event)
    return body, stripe_headers(body)


def _with(**changes) -> dict:
    event = stripe_event("charge.refunded")
    for path, value in changes.items():
        if path == "pi":
            event["data"]["object"]["payment_intent"] = value
        else:
            event[path] = value
    return event


def _bad_stripe_cases():
    body = json.dumps(stripe_event())
    nul = json.dumps(stripe_event()).replace('"cs_', '"cs_\\u0000', 1)
    return {
        # more than the inbox can hold: a 500 on PostgreSQL before, and Stripe retrying for days
        "id of 256 characters": _signed(_with(id="evt_" + "x" * 252)),
        "type of 129 characters": _signed(_with(type="charge." + "x" * 122)),
        "payment intent of 200 characters": _signed(_with(pi="pi_" + "x" * 197)),
        "created beyond a datetime": _signed(_with(created=10**12)),
        "created as a string": _signed(_with(created="1700000000")),
        "a NUL character": (nul, stripe_headers(nul)),
        "missing signature": (body, {"Content-Type": "application/json"}),
        "garbled signature": (body, {"Stripe-Signature": "garbage"}),
        "wrong secret": (body, stripe_headers(body, secret="whsec_other")),
        "stale timestamp": (body, stripe_headers(body, timestamp=int(time.time()) - 301)),
        "tampered body": (body.replace("cs_", "cx_", 1), stripe_headers(body)),
        "not json": ("{not json", stripe_headers("{not json")),
        "not an event": ('{"hello": 1}', stripe_headers('{"hello": 1}')),
        "data not an object": ('{"id": "evt_1", "type": "charge.refunded", "data": "x"}',
                               stripe_headers('{"id": "evt_1", "type": "charge.refunded", "data": "x"}')),
        "a JSON list": ("[1, 2]", stripe_headers("[1, 2]")),
    }


def test_the_longest_storable_stripe_event_is_accepted_and_an_escaped_backslash_is_no_nul(client, runtime):
    event = _with(id="evt_" + "x" * 251, type="charge." + "x" * 121, pi="pi_" + "x" * 117)
    event["data"]["object"]["description"] = "a path: C:\\u0000dir"  # a backslash, then the text u0000
    body, headers = _signed(event)
    assert '\\\\u0000' in body
    response = client.post("/webhooks/stripe", data=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    with runtime.db.session_scope() as s:
        row = s.scalar(select(InboxEvent))
        assert (len(row.event_id), len(row.type), len(row.subject)) == (255, 128, 128)
        assert row.payload["data"]["object"]["description"] == "a path: C:\\u0000dir"


@pytest.mark.parametrize("case", list(_bad_stripe_cases()))
def test_bad_stripe_input_is_400_and_stores_nothing(client, runtime, case):
    body, headers = _bad_stripe_cases()[case]
    response = client.post("/webhooks/stripe", data=body, headers=headers)
    assert response.status_code == 400
    assert _error(response) in ("invalid_signature", "invalid_json", "invalid_event")
    assert _count(runtime) == 0
    assert runtime.broker.queues.get("inbox") is None or runtime.broker.queues["inbox"].qsize() == 0


def test_platform_event_is_accepted_once(client, runtime):
    event = platform_event("student.upserted", {"student_id": "stu_1", "email": "a@b.test", "name": "A",
                                                "timezone": "Europe/Berlin"})
    body = json.dumps(event).encode()
    first = client.post("/webhooks/platform", data=body, headers=platform_headers(body))
    assert first.status_code == 200 and first.get_json() == {"received": True, "duplicate": False}
    second = client.post("/webhooks/platform", data=body, headers=platform_headers(body))
    assert second.get_json() == {"received": True, "duplicate": True}
    with runtime.db.session_scope() as s:
        row = s.scalar(select(InboxEvent))
        assert (row.event_id, row.type, row.subject) == (event["id"], "student.upserted", "student:stu_1")


def test_a_padded_id_is_the_subject_of_the_id_it_names(client, runtime):
    """The model reads " stu_1 " as stu_1, so the event's subject (its lock) is student:stu_1, not a subject of
    its own (one longer than the column, with enough spaces: a 500 on every retry)."""
    padded = " " * 60 + "stu_1" + " " * 60
    event = platform_event("booking.created", {"booking_id": "bk_1", "student_id": padded, "class_id": "gc_1"})
    body = json.dumps(event).encode()
    assert client.post("/webhooks/platform", data=body, headers=platform_headers(body)).status_code == 200
    with runtime.db.session_scope() as s:
        assert s.scalar(select(InboxEvent.subject)) == "student:stu_1"


def test_platform_signature_allows_several_v1_values_for_rotation(client, runtime):
    body = json.dumps(platform_event("class.upserted", {
        "class_id": "gc_1", "title": "T", "starts_at": "2026-12-01T10:00:00+00:00",
        "ends_at": "2026-12-01T11:00:00+00:00", "capacity": 8, "seats_taken": 1, "status": "scheduled"})).encode()
    old = platform_headers(body, secret="old-secret")["Platform-Signature"]
    new = platform_headers(body)["Platform-Signature"]
    header = old + ",v1=" + new.split("v1=")[1]
    response = client.post("/webhooks/platform", data=body, headers={"Platform-Signature": header})
    assert response.status_code == 200 and _count(runtime) == 1


def test_platform_signature_in_upper_case_hex_is_accepted_and_a_garbled_one_is_named(client, runtime):
    """Before: upper-case hex was refused as "needs t= and at least one v1=", which the header had."""
    body = json.dumps(platform_event("class.upserted", {
        "class_id": "gc_1", "title": "T", "starts_at": "2026-12-01T10:00:00+00:00", "capacity": 8,
        "seats_taken": 1})).encode()
    t, mac = platform_headers(body)["Platform-Signature"].split(",v1=")
    response = client.post("/webhooks/platform", data=body, headers={"Platform-Signature": f"{t},v1={mac.upper()}"})
    assert response.status_code == 200 and _count(runtime) == 1
    garbled = client.post("/webhooks/platform", data=body, headers={"Platform-Signature": f"{t},v1={mac[:-1]}"})
    assert garbled.status_code == 400 and "64 hexadecimal characters" in garbled.get_json()["error"]["message"]


def _bad_platform_cases():
    good = platform_event("booking.created", {"booking_id": "bk_1", "student_id": "stu_1", "class_id": "gc_1"})
    body = json.dumps(good).encode()

    def signed(raw: bytes):
        return raw, platform_headers(raw)

    missing_data = dict(good, data={"booking_id": "bk_1", "class_id": "gc_1"})
    naive_time = dict(good, occurred_at="2026-11-24T10:00:00")
    bad_outcome = platform_event("attendance.marked", {"booking_id": "b", "outcome": "maybe",
                                                       "marked_at": "2026-11-24T10:00:00Z"})
    nul = json.dumps(dict(good, note="a\u0000b")).encode()  # jsonb cannot hold it: a 500 on PostgreSQL before
    return {
        "a NUL character": signed(nul),
        "missing signature": (body, {}),
        "garbled header": (body, {"Platform-Signature": "t=abc,v1=zz"}),
        "wrong secret": (body, platform_headers(body, secret="nope")),
        "stale": (body, platform_headers(body, timestamp=int(time.time()) - 400)),
        "future": (body, platform_headers(body, timestamp=int(time.time()) + 400)),
        "tampered": (body.replace(b"bk_1", b"bk_2"), platform_headers(body)),
        "not json": signed(b"{oops"),
        "array body": signed(b"[1,2]"),
        "missing student_id": signed(json.dumps(missing_data).encode()),
        "naive occurred_at": signed(json.dumps(naive_time).encode()),
        "bad enum": signed(json.dumps(bad_outcome).encode()),
        "no id": signed(json.dumps({k: v for k, v in good.items() if k != "id"}).encode()),
    }


@pytest.mark.parametrize("case", list(_bad_platform_cases()))
def test_bad_platform_input_is_400_and_stores_nothing(client, runtime, case):
    body, headers = _bad_platform_cases()[case]
    response = client.post("/webhooks/platform", data=body, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert _error(response) in ("invalid_signature", "invalid_json", "invalid_event")
    assert _count(runtime) == 0


def test_schema_violation_names_the_field(client):
    event = platform_event("class.upserted", {"class_id": "gc_1", "starts_at": "2026-12-01T10:00:00Z",
                                              "capacity": -1, "seats_taken": 0})
    body = json.dumps(event).encode()
    response = client.post("/webhooks/platform", data=body, headers=platform_headers(body))
    assert response.status_code == 400
    assert "data.capacity" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("path", ["/webhooks/stripe", "/webhooks/platform"])
def test_body_over_256_kib_is_413_before_parsing(client, runtime, path):
    body = b"x" * (256 * 1024 + 1)
    response = client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and _error(response) == "payload_too_large"
    assert _count(runtime) == 0


def test_unknown_verified_type_is_stored_and_ignored(client, runtime, worker):
    from tests.conftest import drain

    body = json.dumps(stripe_event("customer.created"))
    client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    drain(runtime)
    with runtime.db.session_scope() as s:
        assert s.scalar(select(InboxEvent.status)) == InboxStatus.IGNORED


def test_broker_down_still_acknowledges_and_the_sweeper_resends(client, runtime, monkeypatch):
    """Sending fails after the commit: the event is durable and acknowledged; the sweeper re-sends it."""
    from workers import actors

    def broken_send(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(runtime.actors["process_inbox_event"], "send", broken_send)
    body = json.dumps(stripe_event("customer.created"))
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200 and response.get_json()["duplicate"] is False
    monkeypatch.undo()
    assert actors.resend_stale(0) == 1
    assert runtime.broker.queues["inbox"].qsize() == 1


def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_readyz_is_503_when_the_database_is_unreachable(runtime):
    from db.database import Database
    from ingress.app import create_app

    settings = runtime.settings.with_(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    runtime.db = Database(settings.database_url, connect_args={"connect_timeout": 1})
    app = create_app(settings, runtime=runtime)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and "database" in response.get_json()["error"]["message"]


def test_an_event_that_cannot_be_stored_for_want_of_the_database_is_503_to_retry(runtime):
    from db.database import Database
    from ingress.app import create_app

    settings = runtime.settings.with_(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    runtime.db = Database(settings.database_url, connect_args={"connect_timeout": 1})
    client = create_app(settings, runtime=runtime).test_client()
    body = json.dumps(stripe_event("customer.created"))
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 503 and _error(response) == "database_unavailable"
    assert response.headers["Retry-After"] == "5"
    event = json.dumps(platform_event("student.upserted", {"student_id": "stu_1", "email": "a@b.test"})).encode()
    assert client.post("/webhooks/platform", data=event, headers=platform_headers(event)).status_code == 503


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and _error(response) == "not_found"


def test_a_redelivery_of_a_long_pending_event_re_sends_its_message(client, runtime):
    """An ingress killed between its commit and the send: the sender's retry re-enqueues the row."""
    from datetime import timedelta

    from db.types import utcnow

    body = json.dumps(stripe_event("customer.created"))
    client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    runtime.broker.flush_all()  # the message is lost
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).get_json()["duplicate"]
    assert runtime.broker.queues["inbox"].qsize() == 0  # fresh: the first message may still be on its way
    with runtime.db.session_scope() as s:
        s.scalar(select(InboxEvent)).received_at = utcnow() - timedelta(seconds=30)
    again = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert again.get_json() == {"received": True, "duplicate": True}
    assert runtime.broker.queues["inbox"].qsize() == 1


def test_a_re_sent_purchase_is_marked_as_its_first_message_was(client, runtime):
    from datetime import timedelta

    import dramatiq

    from db.types import utcnow

    body = json.dumps(stripe_event("checkout.session.completed", client_reference_id="stu_1",
                                   metadata={"kind": "course", "course_code": "YOGA"}))
    client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    runtime.broker.flush_all()  # the message is lost
    with runtime.db.session_scope() as s:
        s.scalar(select(InboxEvent)).received_at = utcnow() - timedelta(seconds=30)
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).get_json()["duplicate"]
    message = dramatiq.Message.decode(runtime.broker.queues["inbox"].get_nowait())
    assert message.kwargs == {"purchase": True}


@pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_terminated_database_backend_fails_one_request_and_the_next_is_stored(client, runtime):
    """The ingress keeps one connection per thread; losing it costs one 503 (the sender retries), no more."""
    first = json.dumps(stripe_event("customer.created"))
    assert client.post("/webhooks/stripe", data=first, headers=stripe_headers(first)).status_code == 200
    with runtime.db.direct_autocommit() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with runtime.db.engine.connect() as admin:
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    second = json.dumps(stripe_event("customer.created"))
    failed = client.post("/webhooks/stripe", data=second, headers=stripe_headers(second))
    assert failed.status_code == 503 and _error(failed) == "database_unavailable"
    retried = client.post("/webhooks/stripe", data=second, headers=stripe_headers(second))
    assert retried.get_json() == {"received": True, "duplicate": False}
    assert _count(runtime) == 2


@pytest.mark.parametrize("type_", ["student.upsert", "booking.canceled", "Student.Upserted"])
def test_platform_event_of_unknown_type_is_400_and_nothing_stored(client, runtime, type_):
    body = json.dumps(platform_event(type_, {"student_id": "stu_1"})).encode()
    response = client.post("/webhooks/platform", data=body, headers=platform_headers(body))
    assert response.status_code == 400 and _error(response) == "unknown_event_type"
    assert "student.upserted" in response.get_json()["error"]["message"]  # the known types are listed
    assert _count(runtime) == 0
    assert runtime.broker.queues.get("inbox") is None or runtime.broker.queues["inbox"].qsize() == 0


def _standard_headers(body: bytes, secret=None, msg_id="msg_1", timestamp=None):
    from standardwebhooks import Webhook
    from datetime import datetime, timezone
    from tasks.signatures import standard_secret
    from tests.conftest import PLATFORM_SECRET

    t = int(time.time()) if timestamp is None else timestamp
    signature = Webhook(standard_secret(secret or PLATFORM_SECRET)).sign(
        msg_id, datetime.fromtimestamp(t, tz=timezone.utc), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(t), "webhook-signature": signature,
            "Content-Type": "application/json"}


def test_platform_event_signed_with_standard_webhooks_headers_is_accepted(client, runtime):
    body = json.dumps(platform_event("student.upserted", {"student_id": "stu_sw"})).encode()
    response = client.post("/webhooks/platform", data=body, headers=_standard_headers(body))
    assert response.status_code == 200 and response.get_json() == {"received": True, "duplicate": False}
    assert _count(runtime) == 1


@pytest.mark.parametrize("case", ["wrong secret", "stale", "garbled", "body changed"])
def test_bad_standard_webhooks_signature_is_400_and_nothing_stored(client, runtime, case):
    body = json.dumps(platform_event("student.upserted", {"student_id": "stu_sw"})).encode()
    headers = _standard_headers(body, secret="other" if case == "wrong secret" else None,
                                timestamp=int(time.time()) - 600 if case == "stale" else None)
    if case == "garbled":
        headers["webhook-signature"] = "v1"
    if case == "body changed":
        body = body.replace(b"stu_sw", b"stu_xx")
    response = client.post("/webhooks/platform", data=body, headers=headers)
    assert response.status_code == 400 and _error(response) == "invalid_signature"
    assert _count(runtime) == 0
