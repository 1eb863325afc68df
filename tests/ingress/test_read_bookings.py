"""GET /v1/students/<id>/steps/<step_id>/eligibility, GET /v1/calendar, and the booking lifecycle end to end
through the signed platform webhook, the stub broker and real worker threads."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from db.enums import EnrollmentStatus, InboxStatus, ProgramStatus
from db.models import Booking, InboxEvent, OutboxMessage
from tests import factories
from tests.conftest import drain
from tests.signing import platform_headers
from tests.tasks.bookings.bookings_support import (
    T0,
    at,
    attendance,
    booking_cancelled,
    booking_created,
    class_upserted,
    progress,
    student_upserted,
    world,
)


def _eligibility(client, headers, student_id, step_id, class_id=None):
    url = f"/v1/students/{student_id}/steps/{step_id}/eligibility"
    response = client.get(url, headers=headers, query_string={"class_id": class_id} if class_id else None)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return body["eligible"], body["reason"]


# --------------------------------------------------------------------------- eligibility


def test_eligibility_answers_from_the_same_rule_as_the_event_path(client, runtime, admin_headers):
    db = runtime.db
    w = world(db)
    step1, step2 = w.step_ids[0], w.step_ids[1]
    assert _eligibility(client, admin_headers, "stu_1", step1) == (True, None)
    assert _eligibility(client, admin_headers, "stu_1", step1, w.option(1)) == (True, None)
    assert _eligibility(client, admin_headers, "stu_1", step1, w.option(2)) == (False, "not_a_step_option")
    # a class id with surrounding spaces, as a booking.created would carry it (which strips them): the same answer
    assert _eligibility(client, admin_headers, "stu_1", step1, f" {w.option(1)} ") == (True, None)
    assert _eligibility(client, admin_headers, "stu_1", 987654) == (False, "unknown_course_step")
    assert _eligibility(client, admin_headers, "stu_nobody", step1) == (False, "no_active_enrollment")
    # the event path decides the same way, after which the answer changes to "already booked"
    from tests.tasks.bookings.bookings_support import deliver, rejections

    deliver(db, booking_created("bk_bad", w.option(2), step_id=step1))
    assert rejections(db) == {"bk_bad": "not_a_step_option"}
    deliver(db, booking_created("bk_1", w.option(1), step_id=step1))
    assert _eligibility(client, admin_headers, "stu_1", step1) == (False, "step_already_booked")
    assert _eligibility(client, admin_headers, "stu_1", step2) == (True, None)
    deliver(db, attendance("bk_1", "attended"))
    assert _eligibility(client, admin_headers, "stu_1", step1) == (False, "step_already_completed")


def test_eligibility_of_a_suspended_enrollment_and_a_cancelled_class(client, runtime, admin_headers):
    w = world(runtime.db, status=EnrollmentStatus.SUSPENDED)
    assert _eligibility(client, admin_headers, "stu_1", w.step_ids[0]) == (False, "enrollment_suspended")
    with runtime.db.session_scope() as s:
        from db.models import GroupClass, StudentCourseEnrollment

        s.get(StudentCourseEnrollment, w.enrollment_id).status = EnrollmentStatus.ACTIVE
        s.get(GroupClass, w.option(1)).status = "cancelled"
    assert _eligibility(client, admin_headers, "stu_1", w.step_ids[0], w.option(1)) == (False, "class_cancelled")


def test_eligibility_is_not_enqueued_and_needs_a_token(client, runtime):
    w = world(runtime.db)
    url = f"/v1/students/stu_1/steps/{w.step_ids[0]}/eligibility"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert runtime.broker.queues.get("inbox") is None or runtime.broker.queues["inbox"].qsize() == 0


# --------------------------------------------------------------------------- calendar


def test_calendar_lists_classes_in_the_window_tagged_with_course_steps(client, runtime, admin_headers):
    db = runtime.db
    with db.session_scope() as s:
        program = factories.program(s, steps=2, bundle=())
        factories.program(s, code="DRAFT", steps=1, bundle=(), status=ProgramStatus.DRAFT)
        step1 = program.steps[0]
    from tests.tasks.bookings.bookings_support import deliver

    deliver(db, class_upserted("gc_SFZ_1_0", title="Salsa 1", capacity=10, seats_taken=7, starts_at=at(60)))
    deliver(db, class_upserted("gc_plain", title="Open class", capacity=5, seats_taken=5, starts_at=at(30)))
    deliver(db, class_upserted("gc_DRAFT_1_0", title="Draft", starts_at=at(90)))
    deliver(db, class_upserted("gc_later", title="Later", starts_at=at(60 * 24 * 40)))
    response = client.get("/v1/calendar", headers=admin_headers,
                          query_string={"from": T0.isoformat(), "to": (T0 + timedelta(days=7)).isoformat()})
    assert response.status_code == 200
    classes = response.get_json()["classes"]
    assert [c["class_id"] for c in classes] == ["gc_plain", "gc_SFZ_1_0", "gc_DRAFT_1_0"]
    plain, course, draft = classes
    assert plain["course_steps"] == [] and plain["seats_left"] == 0
    assert course["seats_left"] == 3 and course["title"] == "Salsa 1"
    assert course["course_steps"] == [{"course_code": "SFZ", "course_step_id": step1.id, "label": "SFZ-1",
                                       "position": 1}]
    assert draft["course_steps"] == []  # only published courses tag the calendar
    # "Z" and a bare date-time (read as UTC) are accepted too
    z = client.get("/v1/calendar?from=2026-11-01T00:00:00Z&to=2026-11-08T00:00:00", headers=admin_headers)
    assert [c["class_id"] for c in z.get_json()["classes"]] == ["gc_plain", "gc_SFZ_1_0", "gc_DRAFT_1_0"]
    assert response.get_json()["next_from"] is None  # the whole window
    # a cancelled class has no seat left, as the course's own view says (the calendar said 3)
    deliver(db, class_upserted("gc_SFZ_1_0", title="Salsa 1", capacity=10, seats_taken=7, starts_at=at(60),
                               status="cancelled", when=T0 + timedelta(minutes=1)))
    cancelled = client.get("/v1/calendar", headers=admin_headers, query_string={
        "from": T0.isoformat(), "to": (T0 + timedelta(days=7)).isoformat()}).get_json()["classes"][1]
    assert (cancelled["class_id"], cancelled["status"], cancelled["seats_left"]) == ("gc_SFZ_1_0", "cancelled", 0)
    listed = client.get("/v1/courses/SFZ", headers=admin_headers).get_json()
    assert listed["steps"][0]["options"][0]["seats_left"] == 0


def test_calendar_pages_through_a_full_window_without_repeating_or_skipping_a_class(client, runtime,
                                                                                  admin_headers, monkeypatch):
    from tasks.reporting import calendar
    from tests.tasks.bookings.bookings_support import deliver

    monkeypatch.setattr(calendar, "MAX_CLASSES", 3)
    starts = {"a": 10, "b": 20, "c1": 30, "c2": 30, "d": 40, "e1": 50, "e2": 50}  # minutes after T0
    for class_id, minutes in starts.items():
        deliver(runtime.db, class_upserted(class_id, starts_at=at(minutes)))
    pages, start = [], T0.isoformat()
    while start is not None and len(pages) < 10:
        body = client.get("/v1/calendar", headers=admin_headers,
                          query_string={"from": start, "to": (T0 + timedelta(days=1)).isoformat()}).get_json()
        pages.append([c["class_id"] for c in body["classes"]])
        start = body["next_from"]
    assert pages == [["a", "b"], ["c1", "c2", "d"], ["e1", "e2"]]
    for n in range(5):  # more than a page starting at one instant: that instant whole, then the rest
        deliver(runtime.db, class_upserted(f"f{n}", starts_at=at(60)))
    deliver(runtime.db, class_upserted("g", starts_at=at(70)))
    body = client.get("/v1/calendar", headers=admin_headers,
                      query_string={"from": at(60).isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}).get_json()
    assert [c["class_id"] for c in body["classes"]] == [f"f{n}" for n in range(5)]
    last = client.get("/v1/calendar", headers=admin_headers,
                      query_string={"from": body["next_from"], "to": (T0 + timedelta(days=1)).isoformat()}).get_json()
    assert [c["class_id"] for c in last["classes"]] == ["g"] and last["next_from"] is None
    assert body["next_from"] == at(70).isoformat()  # the next start time, not one a client could not ask from
    # the instant's classes are the rest of the window: nothing more to ask for. Before: next_from was the instant
    # plus a microsecond, and asked with `to` one microsecond after the instant, that answered 400 (`to` not after
    # `from`)
    for to in (at(65), at(60) + timedelta(microseconds=1)):
        body = client.get("/v1/calendar", headers=admin_headers,
                          query_string={"from": at(60).isoformat(), "to": to.isoformat()}).get_json()
        assert [c["class_id"] for c in body["classes"]] == [f"f{n}" for n in range(5)]
        assert body["next_from"] is None


@pytest.mark.parametrize("query", [
    {}, {"from": "2026-11-01T00:00:00Z"}, {"to": "2026-11-01T00:00:00Z"},
    {"from": "yesterday", "to": "2026-11-01T00:00:00Z"},
    {"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
    {"from": "2020-01-01T00:00:00Z", "to": "2026-11-01T00:00:00Z"},
])
def test_calendar_rejects_bad_windows_with_400(client, runtime, admin_headers, query):
    response = client.get("/v1/calendar", headers=admin_headers, query_string=query)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_parameter"


def test_calendar_needs_a_token(client, runtime):
    assert client.get("/v1/calendar?from=2026-11-01T00:00:00Z&to=2026-11-02T00:00:00Z").status_code == 401


# --------------------------------------------------------------------------- end to end over HTTP


def _post(client, event) -> dict:
    body = json.dumps(event).encode()
    response = client.post("/webhooks/platform", data=body, headers=platform_headers(body))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_booking_lifecycle_end_to_end_over_the_signed_webhook(client, runtime, worker, admin_headers):
    db = runtime.db
    w = world(db, classes=False)
    step1 = w.step_ids[0]
    _post(client, student_upserted(email="real@example.test", name="Real Name", tz="America/New_York"))
    _post(client, class_upserted(w.option(1), title="Salsa 1", starts_at=at(60 * 24)))
    # wrong order over the wire: the cancel of bk_1 before bk_1 itself
    cancel = booking_cancelled("bk_1", within_policy=True, when=at(10))
    assert _post(client, cancel) == {"received": True, "duplicate": False}
    drain(runtime)
    with db.session_scope() as s:
        parked = s.scalar(select(InboxEvent).where(InboxEvent.event_id == cancel["id"]))
        assert parked.status == InboxStatus.WAITING and parked.waiting_for == "booking:bk_1"
    first = booking_created("bk_1", w.option(1), step_id=step1, when=at(0))
    _post(client, first)
    assert _post(client, first)["duplicate"] is True
    # bk_1 settles before the rebooking arrives: booking.created events of one student are serialized
    # but not ordered, and a bk_2 taken first would leave bk_1 without a confirmation
    drain(runtime)
    # the rebooking, and a refused one
    _post(client, booking_created("bk_2", w.option(1), step_id=step1, when=at(20)))
    _post(client, booking_created("bk_x", w.option(2), step_id=step1, when=at(30)))
    drain(runtime)
    with db.session_scope() as s:
        statuses = {e.event_id: e.status for e in s.scalars(select(InboxEvent))}
        assert set(statuses.values()) == {InboxStatus.PROCESSED}, statuses
        assert {b.id: b.status.value for b in s.scalars(select(Booking))} == {
            "bk_1": "cancelled", "bk_2": "active", "bk_x": "rejected"}
        [rejected] = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "booking.rejected")).all()
        # refused on the student's enrollment, whose sequence it carries: the data names it
        assert rejected.enrollment_id is not None
        assert rejected.payload == {"type": "booking.rejected", "data": {
            "booking_id": "bk_x", "reason": "not_a_step_option", "enrollment_id": rejected.enrollment_id}}
        confirmed = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "booking_confirmed")
                              .order_by(OutboxMessage.id)).all()
        assert [m.payload["context"]["booking_id"] for m in confirmed] == ["bk_1", "bk_2"]
        assert confirmed[-1].recipient == "real@example.test"
        assert confirmed[-1].payload["context"]["timezone"] == "America/New_York"
        assert confirmed[-1].payload["context"]["class_title"] == "Salsa 1"
    p = progress(db, w, 1)
    assert p["status"].value == "booked" and p["booking_id"] == "bk_2"
    assert _eligibility(client, admin_headers, "stu_1", step1) == (False, "step_already_booked")


def test_a_step_id_beyond_the_database_integer_is_404_not_500(client, admin_headers):
    response = client.get("/v1/students/stu_1/steps/71757704118106284032/eligibility", headers=admin_headers)
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
