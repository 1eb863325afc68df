"""GET /v1/students/<id>/courses and /credits, fed end to end through the signed Stripe webhook."""
from __future__ import annotations

import json

from sqlalchemy import select

from db.enums import BookingStatus, BundleKind, CreditType, InboxStatus, ProgressStatus
from db.models import Booking, CreditPackage, InboxEvent, StudentCourseProgress
from tests import factories
from tests.conftest import drain
from tests.signing import stripe_headers
from tests.tasks.purchases.payments_support import charge_refunded, checkout, dispute_closed, dispute_created


def _post(client, event) -> dict:
    body = json.dumps(event)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _catalog(db):
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2), (BundleKind.GROUP_CREDIT, 1)))
        s.add(CreditPackage(code="P10", title="Ten", price_amount=9000, credit_type=CreditType.GROUP, quantity=10))


def test_purchase_over_http_shows_in_courses_and_credits(client, runtime, worker, admin_headers):
    _catalog(runtime.db)
    course = checkout(cs="cs_http_1", pi="pi_http_1")
    assert _post(client, course) == {"received": True, "duplicate": False}
    assert _post(client, course)["duplicate"] is True
    _post(client, checkout(cs="cs_http_2", pi="pi_http_2", package="P10", amount=9000))
    drain(runtime)
    courses = client.get("/v1/students/stu_1/courses", headers=admin_headers).get_json()
    assert courses["student_id"] == "stu_1"
    [enrollment] = courses["enrollments"]
    assert enrollment["course_code"] == "SFZ" and enrollment["status"] == "active"
    assert [(s["label"], s["position"], s["status"], s["booking_id"], s["class_id"], s["skipped_ahead"])
            for s in enrollment["steps"]] == [
        ("SFZ-1", 1, "unbooked", None, None, False),
        ("SFZ-2", 2, "unbooked", None, None, False),
        ("SFZ-3", 3, "unbooked", None, None, False),
    ]
    assert enrollment["next_step"] == {"course_step_id": enrollment["steps"][0]["course_step_id"], "label": "SFZ-1"}
    assert enrollment["completed_steps"] == 0
    assert enrollment["credits"] == {"group": 1, "private": 2}  # this enrollment's bundle only
    balances = client.get("/v1/students/stu_1/credits", headers=admin_headers).get_json()
    assert balances == {"student_id": "stu_1", "balances": {"group": 11, "private": 2}}  # package + bundle


def test_steps_show_bookings_progress_and_the_next_step(client, runtime, worker, admin_headers):
    _catalog(runtime.db)
    _post(client, checkout(cs="cs_1", pi="pi_1"))
    drain(runtime)
    with runtime.db.session_scope() as s:
        rows = s.scalars(select(StudentCourseProgress).order_by(StudentCourseProgress.step_id)).all()
        rows[0].status = ProgressStatus.COMPLETED
        rows[1].status, rows[1].booking_id, rows[1].skipped_ahead = ProgressStatus.BOOKED, "bk_2", False
        s.add(Booking(id="bk_2", student_id="stu_1", class_id="gc_SFZ_2_0", course_step_id=rows[1].step_id,
                      enrollment_id=rows[1].enrollment_id, status=BookingStatus.ACTIVE))
    [enrollment] = client.get("/v1/students/stu_1/courses", headers=admin_headers).get_json()["enrollments"]
    assert [s["status"] for s in enrollment["steps"]] == ["completed", "booked", "unbooked"]
    assert enrollment["steps"][1]["booking_id"] == "bk_2" and enrollment["steps"][1]["class_id"] == "gc_SFZ_2_0"
    assert enrollment["next_step"]["label"] == "SFZ-3" and enrollment["completed_steps"] == 1


def test_refund_before_purchase_over_http_and_the_worker(client, runtime, worker, admin_headers):
    _catalog(runtime.db)
    refund = charge_refunded(pi="pi_r")
    _post(client, refund)
    drain(runtime)
    with runtime.db.session_scope() as s:
        assert s.scalar(select(InboxEvent.status).where(InboxEvent.event_id == refund["id"])) == InboxStatus.WAITING
    _post(client, checkout(cs="cs_r", pi="pi_r"))
    drain(runtime)
    with runtime.db.session_scope() as s:
        assert s.scalar(select(InboxEvent.status).where(InboxEvent.event_id == refund["id"])) == InboxStatus.PROCESSED
    [enrollment] = client.get("/v1/students/stu_1/courses", headers=admin_headers).get_json()["enrollments"]
    assert enrollment["status"] == "revoked" and enrollment["next_step"] is None
    assert {s["status"] for s in enrollment["steps"]} == {"cancelled"}
    assert enrollment["credits"] == {"group": 0, "private": 0}


def test_dispute_lifecycle_over_http(client, runtime, worker, admin_headers):
    _catalog(runtime.db)
    _post(client, checkout(cs="cs_d", pi="pi_d"))
    _post(client, dispute_created(pi="pi_d"))
    drain(runtime)
    courses = client.get("/v1/students/stu_1/courses", headers=admin_headers).get_json()
    assert courses["enrollments"][0]["status"] == "suspended"
    _post(client, dispute_closed(pi="pi_d", status="won"))
    drain(runtime)
    courses = client.get("/v1/students/stu_1/courses", headers=admin_headers).get_json()
    assert courses["enrollments"][0]["status"] == "active"


def test_unknown_student_has_nothing_and_the_token_is_required(client, admin_headers):
    assert client.get("/v1/students/nobody/courses", headers=admin_headers).get_json() == {
        "student_id": "nobody", "enrollments": []}
    assert client.get("/v1/students/nobody/credits", headers=admin_headers).get_json() == {
        "student_id": "nobody", "balances": {"group": 0, "private": 0}}
    response = client.get("/v1/students/nobody/credits")
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def test_a_step_added_to_a_completed_course_is_listed_unbooked_as_the_next_step(client, runtime, admin_headers):
    """Before: a completed enrollment has no row for it (not owed until booked), so the student's courses did not
    list it and named no next step, though eligibility answered that it can be booked; booking it reopens."""
    from sqlalchemy import select

    from db.models import CourseStep
    from tests.tasks.bookings import bookings_support as bookings
    from tests.tasks.purchases import payments_support as payments

    db = runtime.db
    with db.session_scope() as s:
        factories.program(s, steps=2, bundle=())
    payments.deliver(db, payments.checkout())
    with db.session_scope() as s:
        steps = list(s.scalars(select(CourseStep.id).order_by(CourseStep.position)))
    for n, step_id in enumerate(steps, 1):
        bookings.deliver(db, bookings.booking_created(f"bk_{n}", f"gc_SFZ_{n}_0", step_id=step_id, when=bookings.at(n)))
        bookings.deliver(db, bookings.attendance(f"bk_{n}", when=bookings.at(100 + n)))
    course = client.get("/admin/courses/SFZ", headers=admin_headers).json
    course["steps"].append({"label": "SFZ-3", "title": "Step 3", "options": ["gc_SFZ_3_0"]})
    assert client.put("/admin/courses/SFZ", json=course, headers=admin_headers).status_code == 200
    new_step = [s for s in client.get("/v1/courses/SFZ", headers=admin_headers).json["steps"]
                if s["label"] == "SFZ-3"][0]["id"]
    [e] = client.get("/v1/students/stu_1/courses", headers=admin_headers).json["enrollments"]
    assert e["status"] == "completed" and (e["completed_steps"], e["total_steps"]) == (2, 3)
    assert [(s["label"], s["status"], s["booking_id"]) for s in e["steps"]][-1] == ("SFZ-3", "unbooked", None)
    assert e["next_step"] == {"course_step_id": new_step, "label": "SFZ-3"}
    eligible = client.get(f"/v1/students/stu_1/steps/{new_step}/eligibility", headers=admin_headers).json
    assert eligible["eligible"] is True
    bookings.deliver(db, bookings.booking_created("bk_3", "gc_SFZ_3_0", step_id=new_step, when=bookings.at(200)))
    [e] = client.get("/v1/students/stu_1/courses", headers=admin_headers).json["enrollments"]
    assert e["status"] == "active" and e["steps"][-1]["status"] == "booked"


def test_a_deleted_course_s_enrollment_keeps_its_steps_and_names_no_next_step(client, runtime, admin_headers):
    """Its steps cannot be booked (eligibility: unknown_course_step). Before: its first unbooked step was still
    named the next step to book, and a booking of it was refused."""
    from tasks.catalog import services as catalog
    from tests.tasks.purchases import payments_support as pay

    with runtime.db.session_scope() as s:
        steps = [step.id for step in factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),)).steps]
    pay.deliver(runtime.db, pay.checkout(cs="cs_a", pi="pi_a"))
    with runtime.db.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    eligibility = client.get(f"/v1/students/stu_1/steps/{steps[0]}/eligibility", headers=admin_headers).get_json()
    assert (eligibility["eligible"], eligibility["reason"]) == (False, "unknown_course_step")
    [enrollment] = client.get("/v1/students/stu_1/courses", headers=admin_headers).get_json()["enrollments"]
    assert enrollment["next_step"] is None
    assert [step["status"] for step in enrollment["steps"]] == ["unbooked"] * 3
