"""Property-based fuzzing of the edge on PostgreSQL: the webhooks (signed and not) and the JSON admin and read
routes never answer 500, every refusal is the error object, and a refusal stores nothing.

Bounded: a few hundred examples in all (no deadline; the database is real).
"""
from __future__ import annotations

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from db.models import CourseProgram, CreditPackage, InboxEvent
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.signing import platform_event, platform_headers, stripe_event, stripe_headers
from tests.tasks.catalog.test_catalog import course

pytestmark = pytest.mark.postgres

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture
def pg_client(pg_database):
    from coursepipe.runtime import init_runtime, reset_runtime
    from ingress.app import create_app

    runtime = init_runtime(make_settings(pg_database.url), db=pg_database)
    app = create_app(runtime.settings, runtime=runtime)
    app.config["TESTING"] = True
    yield app.test_client(), runtime
    runtime.broker.flush_all()
    reset_runtime()


def _counts(runtime) -> tuple[int, int, int]:
    with runtime.db.session_scope() as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (InboxEvent, CourseProgram, CreditPackage))


def _check(response, runtime, before) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    if response.status_code >= 400:
        body = json.loads(response.get_data())
        assert set(body) == {"error"}, body
        assert {"code", "message"} <= set(body["error"]) and all(isinstance(body["error"][k], str)
                                                                for k in ("code", "message"))
        assert _counts(runtime) == before


# any character, surrogates included (json.dumps writes those as \ud800-style escapes)
TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
SCALARS = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) \
    | st.floats(allow_nan=True, allow_infinity=True) | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)


def _set(event: dict, path: list[str], value) -> dict:
    node = event
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return event


STRIPE_PATHS = [["id"], ["type"], ["created"], ["data"], ["data", "object"], ["data", "object", "id"],
                ["data", "object", "metadata"], ["data", "object", "payment_intent"], ["data", "object", "charge"],
                ["data", "object", "amount_refunded"], ["data", "object", "client_reference_id"], ["livemode"]]
STRIPE_TYPES = ["checkout.session.completed", "charge.refunded", "charge.dispute.created", "product.updated",
                "price.updated", "customer.created"]
PLATFORM_DATA = {
    "student.upserted": {"student_id": "stu_1", "email": "a@example.com", "name": "A", "timezone": "UTC"},
    "class.upserted": {"class_id": "gc_1", "title": "Yoga", "starts_at": "2030-01-01T10:00:00+00:00",
                       "capacity": 5, "seats_taken": 1, "status": "scheduled"},
    "booking.created": {"booking_id": "bk_1", "student_id": "stu_1", "class_id": "gc_1", "course_step_id": 1},
    "booking.cancelled": {"booking_id": "bk_1", "cancelled_at": "2030-01-01T09:00:00+00:00", "within_policy": True},
    "attendance.marked": {"booking_id": "bk_1", "outcome": "attended", "marked_at": "2030-01-01T11:00:00+00:00"},
}


@st.composite
def stripe_bodies(draw) -> str:
    event = stripe_event(draw(st.sampled_from(STRIPE_TYPES)))
    for _ in range(draw(st.integers(0, 3))):
        _set(event, draw(st.sampled_from(STRIPE_PATHS)), draw(JSON))
    return json.dumps(event, allow_nan=True)


@st.composite
def platform_bodies(draw) -> bytes:
    type_ = draw(st.sampled_from(sorted(PLATFORM_DATA)))
    event = platform_event(type_, dict(PLATFORM_DATA[type_]))
    keys = ["id", "type", "occurred_at", "data"] + [f"data.{k}" for k in PLATFORM_DATA[type_]]
    for _ in range(draw(st.integers(0, 3))):
        _set(event, draw(st.sampled_from(keys)).split("."), draw(JSON))
    return json.dumps(event, allow_nan=True).encode()


# a header value a real client can send: no line breaks (the test client refuses them before the app)
HEADER_VALUE = st.text(st.characters(blacklist_characters="\r\n"), max_size=80)
RAW = st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v, allow_nan=True).encode())


@FUZZ
@given(body=stripe_bodies() | RAW.map(lambda b: b.decode("utf-8", "surrogateescape")), sign=st.booleans(),
       header=HEADER_VALUE)
def test_stripe_webhook_never_500(pg_client, body, sign, header):
    client, runtime = pg_client
    before = _counts(runtime)
    try:
        headers = stripe_headers(body) if sign else {"Stripe-Signature": header}
        data = body.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        headers, data = {"Stripe-Signature": header}, body.encode("utf-8", "surrogatepass")
    _check(client.post("/webhooks/stripe", data=data, headers=headers), runtime, before)


@FUZZ
@given(body=platform_bodies() | RAW, sign=st.booleans(), header=HEADER_VALUE)
def test_platform_webhook_never_500(pg_client, body, sign, header):
    client, runtime = pg_client
    before = _counts(runtime)
    headers = platform_headers(body) if sign else {"Platform-Signature": header}
    _check(client.post("/webhooks/platform", data=body, headers=headers), runtime, before)


SEGMENT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30) | st.integers(-(2**80), 2**80).map(str)
GET_ROUTES = ["/v1/courses/{}", "/v1/students/{}/courses", "/v1/students/{}/credits",
              "/v1/students/{}/steps/{}/eligibility", "/admin/courses/{}", "/admin/packages/{}",
              "/admin/ui/events/{}", "/admin/ui/enrollments/{}", "/admin/events"]
QUERY_KEYS = ["q", "status", "limit", "from", "to", "class_id", "format"]


@FUZZ
@given(route=st.sampled_from(GET_ROUTES), segments=st.lists(SEGMENT, min_size=2, max_size=2),
       query=st.dictionaries(st.sampled_from(QUERY_KEYS), SEGMENT, max_size=3))
def test_read_and_admin_routes_never_500(pg_client, route, segments, query):
    client, runtime = pg_client
    before = _counts(runtime)
    path = route.format(*(quote(s, safe="") for s in segments))
    response = client.get(path + ("?" + urlencode(query) if query else ""),
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    if response.status_code in (301, 302, 308):  # the dashboard's redirects (to a canonical path, or login)
        return
    _check(response, runtime, before)


@st.composite
def course_bodies(draw) -> str:
    body = course()
    keys = ["title", "description", "marketing_copy", "timezone", "price", "price.amount", "price.currency",
            "steps", "bundle", "bundle.kind", "bundle.quantity"]
    for _ in range(draw(st.integers(1, 3))):
        _set(body, draw(st.sampled_from(keys)).split("."), draw(JSON))
    return json.dumps(body, allow_nan=True)


@FUZZ
@given(code=SEGMENT, body=course_bodies() | RAW.map(lambda b: b.decode("utf-8", "replace")),
       kind=st.sampled_from(["courses", "packages"]))
def test_put_catalog_never_500(pg_client, code, body, kind):
    client, runtime = pg_client
    before = _counts(runtime)
    response = client.put(f"/admin/{kind}/{quote(code, safe='')}", data=body.encode("utf-8", "surrogatepass"),
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"})
    if response.status_code < 400:
        return
    _check(response, runtime, before)
