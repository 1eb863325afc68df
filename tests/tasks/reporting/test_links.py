"""The links on an event's page: its enrollment, its student and the other events of its subject; and an
enrollment's events."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from db.models import CourseStep, InboxEvent, StudentCourseEnrollment
from tasks.reporting import links, timeline
from tests import factories
from tests.tasks.bookings.bookings_support import at, attendance, booking_created
from tests.tasks.bookings.bookings_support import deliver as deliver_platform
from tests.tasks.purchases.payments_support import charge_refunded, checkout
from tests.tasks.purchases.payments_support import deliver as deliver_stripe


def _inbox_id(database, event) -> int:
    with database.session_scope() as s:
        return s.scalar(select(InboxEvent.id).where(InboxEvent.event_id == event["id"]))


def test_an_event_leads_to_its_enrollment_student_and_the_other_events_of_its_subject(database):
    with database.session_scope() as s:
        factories.program(s, steps=2)
        factories.group_class(s, id="gc_SFZ_1_0", starts_in=timedelta(days=1))
        other = factories.student(s, id="stu_other", email="other@example.test")
        factories.enrollment(s, other, factories.program(s, code="OTH"), session_id="cs_other")
    bought = checkout(cs="cs_link", pi="pi_link", student="stu_1")
    deliver_stripe(database, bought)
    with database.session_scope() as s:
        enrollment_id = s.scalar(select(StudentCourseEnrollment.id).where(
            StudentCourseEnrollment.stripe_checkout_session_id == "cs_link"))
        first_step = s.scalar(select(CourseStep.id).join(StudentCourseEnrollment,
                                                           StudentCourseEnrollment.program_id == CourseStep.program_id)
                              .where(StudentCourseEnrollment.id == enrollment_id).order_by(CourseStep.position))
    booked = booking_created("bk_link", "gc_SFZ_1_0", step_id=first_step, when=at(1))
    deliver_platform(database, booked)
    attended = attendance("bk_link", when=at(100))
    deliver_platform(database, attended)
    refunded = charge_refunded(pi="pi_link", amount=12000, refunded=1000, refunds=(("re_link", 1000),))
    deliver_stripe(database, refunded)
    unrelated = checkout(cs="cs_someone", pi="pi_someone", student="stu_someone", course="NONE")
    deliver_stripe(database, unrelated)  # fails: unknown course; not linked to ours

    ids = {name: _inbox_id(database, e) for name, e in
           (("bought", bought), ("booked", booked), ("attended", attended), ("refunded", refunded),
            ("unrelated", unrelated))}
    with database.session_scope() as s:
        for name in ("bought", "booked", "attended", "refunded"):
            found = links.event_links(session=s, inbox_id=ids[name])
            assert [e["id"] for e in found["enrollments"]] == [enrollment_id], name
            assert found["enrollments"][0]["course_code"] == "SFZ"
            assert found["student_id"] == "stu_1", name
            others = {e["id"] for e in found["events"]}
            assert ids[name] not in others and ids["unrelated"] not in others
        assert {e["id"] for e in links.event_links(session=s, inbox_id=ids["bought"])["events"]} == {
            ids["booked"], ids["attended"], ids["refunded"]}  # the student's booking's attendance too
        assert ids["bought"] in {e["id"] for e in links.event_links(session=s, inbox_id=ids["attended"])["events"]}

        alone = links.event_links(session=s, inbox_id=ids["unrelated"])
        assert alone["enrollments"] == [] and alone["events"] == []
        assert links.event_links(session=s, inbox_id=999_999) == {
            "enrollments": [], "package_purchases": [], "student_id": None, "events": []}

        # what each event did: the moves logged under its cause
        assert [t.what for t in timeline.event_timeline(session=s, inbox_id=ids["bought"])] == [
            f"enrollment {enrollment_id}: ∅ → active"]
        assert [t.what for t in timeline.event_timeline(session=s, inbox_id=ids["booked"])] == [
            "booking bk_link: ∅ → active", "SFZ-1: unbooked → booked"]
        assert "SFZ-1: booked → completed" in [
            t.what for t in timeline.event_timeline(session=s, inbox_id=ids["attended"])]
        assert [t.what for t in timeline.event_timeline(session=s, inbox_id=ids["refunded"])] == [
            "refund 1: ∅ → succeeded"]
        assert timeline.event_timeline(session=s, inbox_id=ids["unrelated"]) == []
        assert timeline.event_timeline(session=s, inbox_id=999_999) == []

        back = [e["id"] for e in links.enrollment_events(session=s, enrollment_id=enrollment_id)]
        assert back == sorted([ids["bought"], ids["booked"], ids["attended"], ids["refunded"]], reverse=True)
        assert links.enrollment_events(session=s, enrollment_id=999_999) == []
