"""GET /openapi.json: every route of the app and nothing else, event schemas for both directions, and
what the app sends (answers, outbound events) matching it."""
from __future__ import annotations

from jsonschema import Draft202012Validator
from sqlalchemy import select

from db.enums import OutboxChannel
from db.models import OutboxMessage, StudentCourseEnrollment
from ingress.openapi import OPERATIONS, openapi_path
from tasks.messaging import delivery
from tasks.enrollments import services as enrollments
from tasks.events import PLATFORM_DATA
from tasks.messaging.outbound_events import OUTBOUND_DATA
from tests.contract import event_errors, response_errors
from tests.tasks.bookings import bookings_support as bs


def test_served_without_auth_as_openapi_3_1(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json
    assert doc["openapi"] == "3.1.0" and doc["info"]["title"] == "coursepipe"
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)  # each one is valid JSON Schema
    assert "undocumented" not in response.get_data(as_text=True)


def test_every_route_is_documented_and_every_documented_route_exists(app, client):
    doc = client.get("/openapi.json").json
    in_app = {(m.lower(), openapi_path(rule.rule)) for rule in app.url_map.iter_rules()
              for m in rule.methods - {"HEAD", "OPTIONS"}}
    in_doc = {(m, path) for path, ops in doc["paths"].items() for m in ops}
    assert in_app == in_doc
    assert {(m.lower(), p) for m, p in OPERATIONS} == in_app
    eligibility = doc["paths"]["/v1/students/{student_id}/steps/{course_step_id}/eligibility"]["get"]
    assert {"name": "course_step_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}} \
        in eligibility["parameters"]


def test_the_rate_limit_is_documented_wherever_it_can_answer(client):
    """An address past its failed authentications gets 429 on every route under /admin and /v1, the login
    form included; nowhere else."""
    doc = client.get("/openapi.json").json
    limited = {(m, path) for path, ops in doc["paths"].items() for m, o in ops.items() if "429" in o["responses"]}
    everywhere = {(m, path) for path, ops in doc["paths"].items() for m in ops}
    assert limited == {(m, path) for m, path in everywhere if path.startswith(("/admin", "/v1"))}
    assert ("get", "/admin/login") in limited and ("post", "/webhooks/stripe") not in limited


def test_both_directions_of_events_have_schemas(client):
    schemas = client.get("/openapi.json").json["components"]["schemas"]
    for type_ in PLATFORM_DATA:
        assert schemas[f"PlatformEvent.{type_}"]["properties"]["type"] == {"const": type_}
    for type_ in OUTBOUND_DATA:
        assert schemas[f"OutboundEvent.{type_}"]["properties"]["type"] == {"const": type_}
    assert "enrollment.completed" in OUTBOUND_DATA
    booking = schemas["PlatformEventData.booking.created"]
    assert set(booking["required"]) == {"booking_id", "student_id", "class_id"}


def test_inbound_examples_conform_and_a_wrong_one_does_not(app):
    good = [bs.student_upserted(), bs.class_upserted("gc_1"), bs.booking_created("bk_1", "gc_1", step_id=3),
            bs.booking_cancelled("bk_1"), bs.attendance("bk_1")]
    for event in good:
        assert event_errors(app, event, "PlatformEvent") == [], event["type"]
    wrong = bs.attendance("bk_1", outcome="late")
    assert event_errors(app, wrong, "PlatformEvent")  # the checker can fail


def test_the_checker_catches_an_answer_that_breaks_its_schema(app):
    assert response_errors(app, "GET", "/v1/students/stu_1/credits", 200, {"student_id": "stu_1", "balances": {}}) == []
    assert response_errors(app, "GET", "/v1/students/stu_1/credits", 200, {"student_id": 1})
    assert response_errors(app, "GET", "/v1/nowhere", 200, {})


def test_every_outbound_event_of_a_whole_enrollment_life_conforms(app, database):
    w = bs.world(database, steps=2)
    bs.deliver(database, bs.booking_created("bk_1", w.option(1), step_id=w.step_ids[0]))
    bs.deliver(database, bs.booking_created("bk_x", w.option(2), step_id=w.step_ids[0]))  # rejected
    bs.deliver(database, bs.booking_created("bk_2", w.option(2), step_id=w.step_ids[1]))
    bs.deliver(database, bs.booking_cancelled("bk_2", within_policy=True))
    bs.deliver(database, bs.booking_created("bk_3", w.option(2), step_id=w.step_ids[1]))
    bs.deliver(database, bs.attendance("bk_1"))
    bs.deliver(database, bs.attendance("bk_3"))
    with database.session_scope() as s:
        enrollment = s.get(StudentCourseEnrollment, w.enrollment_id)
        enrollment.activated_at = bs.at(0)
        enrollments.announce_created(session=s, enrollment=enrollment,
                                     program=enrollments.program_of(s, enrollment))
        enrollments.suspend(session=s, enrollment=enrollment, cause="dispute:dp_1", reason="dispute opened")
        enrollments.reinstate(session=s, enrollment=enrollment, cause="dispute:dp_1:won", reason="dispute won")
        enrollments.revoke(session=s, enrollment=enrollment, cause="refund:re_1", reason="refunded")
    with database.session_scope() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == OutboxChannel.PLATFORM)
                         .order_by(OutboxMessage.id)).all()
        envelopes = [delivery.outbound_event(public_id=r.public_id, topic=r.topic, payload=r.payload,
                                             created_at=r.created_at, sequence=r.sequence) for r in rows]
    assert {e["type"] for e in envelopes} == set(OUTBOUND_DATA)
    for envelope in envelopes:
        assert event_errors(app, envelope) == [], envelope


def test_the_documented_rejection_reasons_are_the_ones_the_guard_gives():
    from typing import get_args

    from tasks.bookings import services as bookings
    from tasks.messaging.outbound_events import RejectionReason

    reasons = {bookings.UNKNOWN_COURSE_STEP, bookings.NO_ACTIVE_ENROLLMENT, bookings.ENROLLMENT_SUSPENDED,
               bookings.NOT_A_STEP_OPTION, bookings.CLASS_CANCELLED, bookings.STEP_ALREADY_COMPLETED,
               bookings.STEP_ALREADY_BOOKED, bookings.STEP_CANCELLED, bookings.NO_CREDIT}
    assert set(get_args(RejectionReason)) == reasons


def test_the_guide_lists_every_route_of_the_document(app):
    from pathlib import Path

    from ingress.openapi import build_document, route_table

    guide = (Path(__file__).resolve().parents[2] / "docs" / "platform.md").read_text()
    shown = guide.split("<!-- routes:start -->\n", 1)[1].split("\n<!-- routes:end -->", 1)[0]
    assert shown == route_table(build_document(app))
