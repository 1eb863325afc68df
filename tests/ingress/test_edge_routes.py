"""Odd parameters on the authenticated routes: a 4xx with the error object, never a 500, on both databases."""
from __future__ import annotations

import json


import pytest
from sqlalchemy import func, select

from db.models import CourseProgram, InboxEvent, GroupClass
from tests.conftest import ADMIN_TOKEN
from tests.ingress.test_dashboard import csrf_of, login
from tests.signing import platform_event, platform_headers, stripe_event, stripe_headers
from tests.tasks.catalog.test_catalog import course


def _error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    error = response.get_json()["error"]
    assert {"code", "message"} <= set(error)
    return error["code"]


TWENTY_FIVE = "1" * 25


@pytest.mark.parametrize(("path", "status"), [
    ("/admin/?q=%C2%B2", 200),  # "²" is a digit to str.isdigit, not to int()
    ("/admin/?q=" + "9" * 30, 200),
    ("/admin/?q=%00", 400),
    (f"/admin/ui/events/{TWENTY_FIVE}", 404),
    (f"/admin/ui/enrollments/{TWENTY_FIVE}", 404),
    (f"/admin/ui/events/{2**63}", 404),
    (f"/admin/ui/events/{2**63 - 1}", 404),
])
def test_dashboard_pages_with_odd_parameters(client, path, status):
    login(client)
    response = client.get(path)
    if status == 200:
        assert response.status_code == 200
    else:
        _error(response, status)


@pytest.mark.parametrize(("path", "status"), [
    (f"/v1/students/x/steps/{TWENTY_FIVE}/eligibility", 404),
    ("/v1/calendar?from=0001-01-01T00:00:00%2B14:00&to=0001-01-02T00:00:00%2B00:00", 400),
    ("/v1/calendar?from=9999-12-31T23:00:00-14:00&to=9999-12-31T23:30:00-14:00", 400),
    ("/v1/students/%00/credits", 400),
    ("/v1/students/%00/courses", 400),
    ("/v1/courses/%00", 400),
    ("/v1/courses?x=%00", 400),
    ("/admin/courses/%00", 400),
    ("/admin/events?status=%00", 400),
    (f"/admin/events/{TWENTY_FIVE}/replay", 404),
])
def test_api_routes_with_odd_parameters(client, admin_headers, path, status):
    method = client.post if path.endswith("/replay") else client.get
    _error(method(path, headers=admin_headers), status)


@pytest.mark.parametrize("body", [
    lambda: json.dumps(course(title="a\u0000b")),
    lambda: json.dumps(course(title="\udc00")),
    lambda: '{"title": ' + "[" * 5000 + "]" * 5000 + "}",
    lambda: json.dumps(course()).replace('"title"', '"x": NaN, "title"', 1),
])
def test_put_course_with_unstorable_json_is_400_and_writes_nothing(client, admin_headers, runtime, body):
    response = client.put("/admin/courses/SFZ", data=body(), headers={**admin_headers,
                                                                     "Content-Type": "application/json"})
    assert _error(response, 400) == "validation_failed"
    assert response.get_json()["error"]["field"] == "body"
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(CourseProgram)) == 0


@pytest.mark.parametrize("next_", ["/admin/\r\nSet-Cookie: x=1", "/admin/\nX", "/admin/\x00"])
def test_login_with_a_control_character_in_next_goes_home(client, next_):
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": "", "password": ADMIN_TOKEN, "csrf_token": csrf_of(page.get_data(True)),
                                                  "next": next_})
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")
    assert "Set-Cookie: x" not in str(response.headers)


@pytest.mark.parametrize("email", ["ann\x00@example.test", "\x00"])
def test_a_login_with_a_nul_in_the_email_is_refused_as_any_wrong_login(client, email):
    """Before: on PostgreSQL the look-up of the e-mail raised (text cannot hold a NUL): 500, before any login."""
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": email, "password": "pw",
                                                  "csrf_token": csrf_of(page.get_data(True))})
    assert response.status_code == 401
    assert "That e-mail and password (or admin token) are not valid." in response.get_data(True)


def test_evidence_of_an_unknown_dispute_is_404_and_of_a_known_one_without_a_stripe_key_503(client, runtime,
                                                                                       admin_headers):
    """Before: without STRIPE_API_KEY every id, unknown ones too, answered 503 `stripe_not_configured`."""
    from db.enums import DisputeStatus
    from db.models import PaymentDispute

    assert not runtime.settings.stripe_api_key
    unknown = client.post("/admin/disputes/dp_nope/evidence/submit", headers=admin_headers)
    assert _error(unknown, 404) == "not_found"
    with runtime.db.session_scope() as s:
        s.add(PaymentDispute(stripe_dispute_id="dp_1", status=DisputeStatus.OPEN, evidence_status="draft"))
    known = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert _error(known, 503) == "stripe_not_configured"
    with runtime.db.session_scope() as s:  # refused before anything changed
        assert s.scalar(select(PaymentDispute.evidence_status)) == "draft"


# --------------------------------------------------------------------------- validated at the door


def _count(runtime) -> int:
    with runtime.db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(InboxEvent))


@pytest.mark.parametrize("changes", [
    {"id": 12345},
    {"id": {"nested": "prod_1"}},
    {"metadata": "course_code=SFZ"},
    {"metadata": ["SFZ"]},
    {"metadata": {"course_code": {"x": 1}}},
])
@pytest.mark.parametrize("name", ["product.updated", "price.updated"])
def test_catalog_events_of_the_wrong_shape_are_refused_at_the_door(client, runtime, name, changes):
    event = stripe_event(name)
    event["data"]["object"].update(changes)
    body = json.dumps(event)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert _error(response, 400) == "invalid_event"
    assert _count(runtime) == 0


def _class(**changes) -> dict:
    data = {"class_id": "gc_1", "title": "Yoga", "starts_at": "2030-01-01T10:00:00+00:00", "capacity": 10,
            "seats_taken": 0, "status": "scheduled"}
    return data | changes


@pytest.mark.parametrize("changes", [{"capacity": 2**31}, {"seats_taken": 2**31}, {"capacity": 10**30}])
def test_class_numbers_beyond_a_32_bit_column_are_refused_at_the_door(client, runtime, changes):
    raw = json.dumps(platform_event("class.upserted", _class(**changes))).encode()
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    assert _error(response, 400) == "invalid_event"
    assert _count(runtime) == 0


@pytest.mark.parametrize("zone, refused", [("Mars/Olympus", True), ("Eastern Standard Time", True),
                                           ("America/New_York", False)])
def test_a_class_time_zone_is_an_iana_name_as_a_student_s_is(client, runtime, zone, refused):
    """Before: any text was stored, and stood before the course's zone in every reminder, read as UTC."""
    raw = json.dumps(platform_event("class.upserted", _class(timezone=zone))).encode()
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    if refused:
        assert _error(response, 400) == "invalid_event" and "unknown IANA timezone" in response.get_json()[
            "error"]["message"]
        assert _count(runtime) == 0
    else:
        assert response.status_code == 200 and _count(runtime) == 1


def test_the_largest_32_bit_capacity_is_stored_and_processed(client, runtime, worker):
    from tests.conftest import drain

    raw = json.dumps(platform_event("class.upserted", _class(capacity=2**31 - 1))).encode()
    assert client.post("/webhooks/platform", data=raw, headers=platform_headers(raw)).status_code == 200
    drain(runtime)
    with runtime.db.session_scope() as s:
        assert s.get(GroupClass, "gc_1").capacity == 2**31 - 1
        assert s.scalar(select(InboxEvent.status)).value == "processed"


@pytest.mark.parametrize(("field", "value"), [
    ("occurred_at", "0001-01-01T00:00:00+01:00"),  # before: a 500 (the year 0 in UTC)
    ("occurred_at", "9999-12-31T23:59:59-01:00"),  # before: a 500 (the year 10000 in UTC)
    ("occurred_at", "1900-01-01T00:00:00+00:00"),
    ("starts_at", "9999-12-31T23:00:00-05:00"),  # before: stored, then failed in the worker
    ("ends_at", "2030-01-01T11:00:00"),  # before: no offset stored, then failed in the worker
    ("ends_at", "9999-12-31T23:00:00-05:00"),
    # before: read as Unix seconds and stored ("20261102", a compact date, a class starting in August 1970)
    ("starts_at", 1767225600),
    ("starts_at", "1767225600"),
    ("starts_at", "20261102"),
    ("ends_at", 0),
    ("occurred_at", "1767225600"),
    ("occurred_at", 1767225600.5),
])
def test_instants_without_an_offset_or_beyond_the_years_we_keep_are_refused_at_the_door(client, runtime, field,
                                                                                      value):
    event = platform_event("class.upserted", _class(ends_at="2030-01-01T11:00:00+00:00"))
    if field == "occurred_at":
        event["occurred_at"] = value
    else:
        event["data"][field] = value
    raw = json.dumps(event).encode()
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    assert _error(response, 400) == "invalid_event"
    assert field in response.get_json()["error"]["message"]
    assert _count(runtime) == 0


@pytest.mark.parametrize(("type_", "data", "field"), [
    ("booking.cancelled", {"booking_id": "bk_1", "cancelled_at": 1767225600, "within_policy": True}, "cancelled_at"),
    ("attendance.marked", {"booking_id": "bk_1", "outcome": "attended", "marked_at": "1767225600"}, "marked_at"),
])
def test_instants_given_as_numbers_are_refused_naming_the_field(client, runtime, type_, data, field):
    """Before: a JSON number or a text of digits was read as Unix seconds and the event stored."""
    raw = json.dumps(platform_event(type_, data)).encode()
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    assert _error(response, 400) == "invalid_event" and field in response.get_json()["error"]["message"]
    assert _count(runtime) == 0


@pytest.mark.parametrize(("type_", "data", "field"), [
    ("booking.created", {"booking_id": "bk_1", "student_id": "stu_1", "class_id": "gc_1", "course_step_id": "1"},
     "course_step_id"),
    ("booking.created", {"booking_id": "bk_1", "student_id": "stu_1", "class_id": "gc_1", "course_step_id": True},
     "course_step_id"),
    ("booking.cancelled", {"booking_id": "bk_1", "cancelled_at": "2030-01-01T10:00:00+00:00", "within_policy": "true"},
     "within_policy"),
    ("class.upserted", _class(capacity="10"), "capacity"),
])
def test_numbers_and_booleans_sent_as_strings_are_refused_naming_the_field(client, runtime, type_, data, field):
    """Before: read as 1, 1, True and 10 (the document says integer and boolean)."""
    raw = json.dumps(platform_event(type_, data)).encode()
    response = client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))
    assert _error(response, 400) == "invalid_event" and field in response.get_json()["error"]["message"]
    assert _count(runtime) == 0


def test_a_booking_naming_a_step_id_beyond_bigint_is_refused(client, runtime):
    data = {"booking_id": "bk_1", "student_id": "stu_1", "class_id": "gc_1", "course_step_id": 2**63}
    raw = json.dumps(platform_event("booking.created", data)).encode()
    assert _error(client.post("/webhooks/platform", data=raw, headers=platform_headers(raw)), 400) == "invalid_event"
    assert _count(runtime) == 0



def _audit_entries(runtime) -> int:
    from db.models import AuditEntry

    with runtime.db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(AuditEntry))


@pytest.mark.parametrize("path, body", [
    ("/admin/outbox/retry-dead", '{"reason": "a\\u0000b"}'),  # a NUL no text column stores
    ("/admin/outbox/retry-dead", '{"reason": '),  # broken JSON is said so, never read as "no body"
    ("/admin/outbox/retry-dead", '["reason"]'),
    ("/admin/outbox/retry-dead", '{"channel": "mail", "why": "x"}'),
    ("/admin/outbox/retry-dead", '{"after": 100000000000000000000, "reason": "r"}'),  # past a BIGINT
    ("/admin/enrollments", '{"student_id": "stu\\u0000", "course_code": "SFZ", "reason": "r", "grant_bundle": true}'),
])
def test_admin_json_bodies_are_read_strictly(client, admin_headers, runtime, path, body):
    response = client.post(path, data=body, headers={**admin_headers, "Content-Type": "application/json"})
    assert _error(response, 400) == "validation_failed"
    assert _audit_entries(runtime) == 0


def test_a_nul_in_a_dashboard_form_is_refused_and_nothing_is_recorded(client, runtime):
    csrf = login(client)
    response = client.post("/admin/ui/events/replay-failed", data={"csrf_token": csrf, "reason": "a\x00b"})
    assert _error(response, 400) == "invalid_parameter"
    assert _audit_entries(runtime) == 0


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                          "text/plain"])
def test_a_signed_event_sent_with_another_content_type_is_stored(client, runtime, content_type):
    """Before: sent with a form's content type (curl's default for -d), the body was read as a form before the
    view, which then verified an empty body: 400 `invalid_signature`, though the signature was right."""
    raw = json.dumps(platform_event("class.upserted", _class())).encode()
    response = client.post("/webhooks/platform", data=raw,
                           headers={**platform_headers(raw), "Content-Type": content_type})
    assert response.status_code == 200, response.get_json()
    assert _count(runtime) == 1


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/webhooks/stripe", {"POST"}),
    ("PUT", "/healthz", {"GET", "HEAD"}),
    ("POST", "/v1/calendar", {"GET", "HEAD"}),
])
def test_a_method_a_route_does_not_take_is_405_naming_the_ones_it_takes(client, method, path, allowed):
    """Before: 405 without `Allow` (RFC 9110 requires it)."""
    response = client.open(path, method=method, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert _error(response, 405) == "method_not_allowed"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert response.content_type == "application/json"


def test_the_document_lists_what_every_route_may_answer_besides_its_own(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"400", "408", "413"} <= set(paths["/admin/courses/{code}"]["put"]["responses"])
    assert "400" in paths["/healthz"]["get"]["responses"] and "413" not in paths["/healthz"]["get"]["responses"]
    assert "302" in paths["/admin/ui/audit"]["get"]["responses"]
