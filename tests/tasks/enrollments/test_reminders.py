"""Step reminders: one per (enrollment, step, window), never for booked/completed steps, none when off."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from db.enums import EnrollmentStatus, ProgressStatus
from db.models import (
    CourseStep,
    CourseStepOption,
    OutboxMessage,
    ReminderLog,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.types import utcnow
from tasks.enrollments.reminders import send_reminders
from tests import factories
from tests.conftest import make_settings


def _settings(database, enabled=True, days=7):
    return make_settings(database.url, reminders_enabled=enabled, reminder_window_days=days)


def _setup(session):
    """SFZ with 4 steps: 1 booked, 2 unbooked (class in 3 days), 3 unbooked (class in 20 days), 4 completed."""
    program = factories.program(session, steps=4)
    days = {1: 2, 2: 3, 3: 20, 4: 1}
    for position, in_days in days.items():
        factories.group_class(session, id=f"gc_SFZ_{position}_0", title=f"Class {position}",
                              starts_in=timedelta(days=in_days))
    student = factories.student(session, timezone="Europe/Berlin")
    enrollment = factories.enrollment(session, student, program)
    progress = {p.step_id: p for p in session.scalars(select(StudentCourseProgress)
                                                      .where(StudentCourseProgress.enrollment_id == enrollment.id))}
    steps = {s.position: s for s in program.steps}
    progress[steps[1].id].status = ProgressStatus.BOOKED
    progress[steps[4].id].status = ProgressStatus.COMPLETED
    session.flush()
    return program, enrollment, steps


def _mails(database):
    with database.session_scope() as s:
        return s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "step_reminder")
                         .order_by(OutboxMessage.id)).all()


def test_two_runs_in_one_window_send_one_reminder_per_eligible_step(database):
    with database.session_scope() as s:
        _setup(s)
    settings = _settings(database)
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=settings) == 1
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=settings) == 0
    mails = _mails(database)
    assert len(mails) == 1
    context = mails[0].payload["context"]
    assert mails[0].recipient == "stu1@example.test"
    assert (context["step_label"], context["class_id"], context["timezone"]) == ("SFZ-2", "gc_SFZ_2_0", "Europe/Berlin")
    with database.session_scope() as s:
        assert s.scalar(select(ReminderLog.window_key)).startswith("start:")


def test_a_wider_window_reaches_the_later_step_once(database):
    with database.session_scope() as s:
        _setup(s)
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=_settings(database)) == 1
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=_settings(database, days=30)) == 1  # SFZ-3 only
    assert sorted(m.payload["context"]["step_label"] for m in _mails(database)) == ["SFZ-2", "SFZ-3"]


def test_no_reminders_with_the_flag_off(database):
    with database.session_scope() as s:
        _setup(s)
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=_settings(database, enabled=False)) == 0
    assert _mails(database) == []


def test_no_reminders_for_inactive_enrollments_or_students_without_email(database):
    with database.session_scope() as s:
        _, enrollment, _ = _setup(s)
        enrollment.status = EnrollmentStatus.SUSPENDED
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=_settings(database)) == 0
    with database.session_scope() as s:
        s.get(StudentCourseEnrollment, enrollment.id).status = EnrollmentStatus.ACTIVE
        s.get(Student, "stu_1").email = None
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=_settings(database)) == 0
    assert _mails(database) == []


def test_a_step_booked_after_its_reminder_is_not_reminded_again_and_a_new_window_is(database):
    with database.session_scope() as s:
        _, enrollment, steps = _setup(s)
        step2 = steps[2].id
    settings = _settings(database)
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=settings) == 1
    # the first class of SFZ-2 passes; a later one comes into the window: a new window, a new reminder
    later = utcnow() + timedelta(days=4)
    with database.session_scope() as s:
        program_id = s.get(CourseStep, step2).program_id
        factories.group_class(s, id="gc_SFZ_2_1", title="Class 2b", starts_in=timedelta(days=6))
        s.add(CourseStepOption(program_id=program_id, step_id=step2, group_class_id="gc_SFZ_2_1"))
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=settings, now=later) == 1
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=settings, now=later) == 0
    # booked now: never reminded again
    with database.session_scope() as s:
        s.scalar(select(StudentCourseProgress).where(StudentCourseProgress.step_id == step2)).status = \
            ProgressStatus.BOOKED
        factories.group_class(s, id="gc_SFZ_2_2", starts_in=timedelta(days=9))
        s.add(CourseStepOption(program_id=program_id, step_id=step2, group_class_id="gc_SFZ_2_2"))
    with database.session_scope() as s:
        assert send_reminders(session=s, settings=settings, now=utcnow() + timedelta(days=7)) == 0
    labels = [(m.payload["context"]["step_label"], m.payload["context"]["class_id"]) for m in _mails(database)]
    assert labels == [("SFZ-2", "gc_SFZ_2_0"), ("SFZ-2", "gc_SFZ_2_1")]
