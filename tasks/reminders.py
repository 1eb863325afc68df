"""Step reminders (REMINDERS_ENABLED): nudge students about unbooked steps whose next class is near.

Eligible: an active enrollment, a step still `unbooked`, and a scheduled, not-yet-started option of
that step starting within REMINDER_WINDOW_DAYS. The window is named by the earliest such option's
start (`window_key = "start:<UTC yyyymmddThhmm>"`): one reminder per (enrollment, step, window),
enforced by the unique key of `reminder_log`, so re-runs never send twice; a later class coming
into range after that one has passed opens a new window.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from db.enums import ClassStatus, EnrollmentStatus, ProgressStatus
from db.models import (
    CourseProgram,
    CourseStep,
    CourseStepOption,
    GroupClass,
    ReminderLog,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.types import utcnow
from tasks.outbox import add_mail

log = logging.getLogger("coursepipe.reminders")

OPTIONS_LISTED = 3


def window_key(earliest_start: datetime) -> str:
    return f"start:{earliest_start:%Y%m%dT%H%M}Z"


def send_reminders(*, session: Session, settings, now: datetime | None = None) -> int:
    """Queue one `step_reminder` mail per eligible (enrollment, step, window). Returns how many were queued."""
    if not settings.reminders_enabled:
        return 0
    now = now or utcnow()
    horizon = now + timedelta(days=settings.reminder_window_days)

    candidates = session.execute(
        select(StudentCourseProgress, StudentCourseEnrollment, Student, CourseStep, CourseProgram)
        .join(StudentCourseEnrollment, StudentCourseEnrollment.id == StudentCourseProgress.enrollment_id)
        .join(Student, Student.id == StudentCourseEnrollment.student_id)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
        .where(
            StudentCourseEnrollment.status == EnrollmentStatus.ACTIVE,
            StudentCourseProgress.status == ProgressStatus.UNBOOKED,
            CourseStep.deleted_at.is_(None),
        )
        .order_by(StudentCourseEnrollment.id, CourseStep.position)
    ).all()
    if not candidates:
        return 0

    step_ids = {step.id for _, _, _, step, _ in candidates}
    upcoming: dict[int, list[GroupClass]] = defaultdict(list)
    for step_id, group_class in session.execute(
        select(CourseStepOption.step_id, GroupClass)
        .join(GroupClass, GroupClass.id == CourseStepOption.group_class_id)
        .where(
            CourseStepOption.step_id.in_(step_ids),
            CourseStepOption.deleted_at.is_(None),
            GroupClass.status == ClassStatus.SCHEDULED,
            GroupClass.starts_at > now,
            GroupClass.starts_at <= horizon,
        )
        .order_by(GroupClass.starts_at, GroupClass.id)
    ).all():
        upcoming[step_id].append(group_class)

    queued = 0
    for progress, enrollment, student, step, program in candidates:
        classes = upcoming.get(step.id)
        if not classes or not student.email:
            continue
        earliest = classes[0]
        key = window_key(earliest.starts_at)
        if not _log_once(session, enrollment_id=enrollment.id, step_id=step.id, key=key, now=now):
            continue
        timezone = student.timezone or earliest.timezone or program.timezone
        add_mail(
            session=session,
            template="step_reminder",
            recipient=student.email,
            context={
                "student_name": student.name,
                "course_code": program.code,
                "course_title": program.title,
                "step_label": step.label,
                "step_title": step.title,
                "class_id": earliest.id,
                "class_title": earliest.title,
                "starts_at": earliest.starts_at.isoformat(),
                "timezone": timezone,
                "options": [
                    {"class_id": c.id, "class_title": c.title, "starts_at": c.starts_at.isoformat()}
                    for c in classes[:OPTIONS_LISTED]
                ],
            },
            dedupe_key=f"reminder:{enrollment.id}:{step.id}:{key}",
            enrollment_id=enrollment.id,
        )
        queued += 1
    if queued:
        log.info("queued %d step reminder(s)", queued)
    return queued


def _log_once(session: Session, *, enrollment_id: int, step_id: int, key: str, now: datetime) -> bool:
    """Insert the reminder_log row; False if this (enrollment, step, window) was already reminded."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    table = ReminderLog.__table__
    new_id = session.execute(
        insert(table)
        .values(enrollment_id=enrollment_id, step_id=step_id, window_key=key, created_at=now)
        .on_conflict_do_nothing(index_elements=["enrollment_id", "step_id", "window_key"])
        .returning(table.c.id)
    ).scalar()
    return new_id is not None
