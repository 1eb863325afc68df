"""A completed course disputed (suspended), a step added meanwhile (owed to suspended enrollments), the dispute
won: the enrollment is active again with an unbooked step. Completing it is a new completion: `completed_at` is
its date and the platform, last told `enrollment.reinstated` (active), is told `enrollment.completed`. Before, the
step's seeding left the old `completed_at`, which reads as "already told": no event, and the weekly chart
counted the completion in the old week."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from db.enums import EnrollmentStatus, ProgressStatus
from db.models import OutboxMessage, StudentCourseEnrollment, StudentCourseProgress
from tasks.catalog import services as catalog
from tasks.enrollments import services as enrollments
from tests import factories
from tests.tasks.bookings.bookings_support import T0, at, attendance, booking_created, deliver, world

OLD = T0 - timedelta(days=60)


def _course(steps: int) -> dict:
    return {"title": "SFZ course", "timezone": "UTC", "price": {"amount": 12000, "currency": "usd"},
            "steps": [{"label": f"SFZ-{n}", "title": f"Step {n}", "options": [f"gc_SFZ_{n}_0"]}
                      for n in range(1, steps + 1)]}


def test_a_step_added_while_disputed_makes_its_completion_a_new_one(database):
    w = world(database)
    with database.session_scope() as s:
        e = s.get(StudentCourseEnrollment, w.enrollment_id)
        for p in s.scalars(select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == e.id)):
            p.status = ProgressStatus.COMPLETED
        e.status, e.completed_at = EnrollmentStatus.COMPLETED, OLD
    with database.session_scope() as s:
        enrollments.suspend(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id),
                            cause="dispute:dp_1", reason="dispute_opened")
    with database.session_scope() as s:
        factories.group_class(s, id="gc_SFZ_4_0", starts_in=timedelta(days=4))
        catalog.save_course(session=s, course=catalog.parse_course(_course(4), code="SFZ"))
        step4 = catalog.live_steps(s, w.program_id)[3].id
    with database.session_scope() as s:
        enrollments.reinstate(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id),
                              cause="dispute:dp_1:won", reason="dispute_won")
    deliver(database, booking_created("bk_4", "gc_SFZ_4_0", step_id=step4, when=at(10)))
    deliver(database, attendance("bk_4", when=at(60 * 24 * 5)))
    with database.session_scope() as s:
        e = s.get(StudentCourseEnrollment, w.enrollment_id)
        completed = [m.payload["data"]["enrollment_id"] for m in s.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == "enrollment.completed"))]
        assert e.status == EnrollmentStatus.COMPLETED and e.completed_at.replace(tzinfo=None) == at(
            60 * 24 * 5).replace(tzinfo=None)
        assert completed == [w.enrollment_id]
