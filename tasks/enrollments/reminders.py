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

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from db.database import upsert_insert
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
from tasks.messaging.outbox import add_mails

log = logging.getLogger("coursepipe.reminders")

OPTIONS_LISTED = 3


def window_key(earliest_start: datetime) -> str:
    return f"start:{earliest_start:%Y%m%dT%H%M}Z"


def send_reminders(*, session: Session, settings, now: datetime | None = None) -> int:
    """Queue one `step_reminder` mail per eligible (enrollment, step, window). Returns how many were queued.

    Set-based, for 100,000s of enrollments: first the steps that have an option starting inside the
    window (few), then only those steps' unbooked progress rows not reminded in that window yet, then one
    multi-row insert into `reminder_log` (ON CONFLICT DO NOTHING RETURNING: a concurrent run's are skipped)
    and one into the outbox.
    """
    if not settings.reminders_enabled:
        return 0
    now = now or utcnow()
    horizon = now + timedelta(days=settings.reminder_window_days)

    upcoming: dict[int, list] = defaultdict(list)
    for step_id, class_id, title, starts_at, class_tz in session.execute(
        select(CourseStepOption.step_id, GroupClass.id, GroupClass.title, GroupClass.starts_at, GroupClass.timezone)
        .join(GroupClass, GroupClass.id == CourseStepOption.group_class_id)
        .where(
            CourseStepOption.deleted_at.is_(None),
            GroupClass.status == ClassStatus.SCHEDULED,
            GroupClass.starts_at > now,
            GroupClass.starts_at <= horizon,
        )
        .order_by(GroupClass.starts_at, GroupClass.id)
    ).all():
        upcoming[step_id].append((class_id, title, starts_at, class_tz))
    if not upcoming:
        return 0
    # each step's window; a (enrollment, step) already reminded in it is left out by the database, so a run
    # after the first reads only what is new (the unique key of reminder_log still guards the insert)
    window = case({step_id: window_key(classes[0][2]) for step_id, classes in upcoming.items()},
                  value=StudentCourseProgress.step_id)
    reminded = select(ReminderLog.id).where(ReminderLog.enrollment_id == StudentCourseProgress.enrollment_id,
                                            ReminderLog.step_id == StudentCourseProgress.step_id,
                                            ReminderLog.window_key == window)

    candidates = session.execute(
        select(StudentCourseProgress.enrollment_id, StudentCourseProgress.step_id, CourseStep.label, CourseStep.title,
               Student.email, Student.name, Student.timezone, CourseProgram.code, CourseProgram.title,
               CourseProgram.timezone)
        .join(StudentCourseEnrollment, StudentCourseEnrollment.id == StudentCourseProgress.enrollment_id)
        .join(Student, Student.id == StudentCourseEnrollment.student_id)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
        .where(
            StudentCourseProgress.step_id.in_(sorted(upcoming)),
            StudentCourseProgress.status == ProgressStatus.UNBOOKED,
            StudentCourseEnrollment.status == EnrollmentStatus.ACTIVE,
            CourseStep.deleted_at.is_(None),
            Student.email.is_not(None),
            ~reminded.exists(),
        )
        .order_by(StudentCourseProgress.enrollment_id, CourseStep.position)
    ).all()

    queued = 0
    for start in range(0, len(candidates), CHUNK):
        chunk = candidates[start:start + CHUNK]
        keys = {(row[0], row[1]): window_key(upcoming[row[1]][0][2]) for row in chunk}
        fresh = _log_once_many(session, keys, now)
        mails = []
        for enrollment_id, step_id, label, step_title, email, name, student_tz, code, course_title, course_tz in chunk:
            if (enrollment_id, step_id) not in fresh:
                continue
            classes = upcoming[step_id]
            class_id, class_title, starts_at, class_tz = classes[0]
            key = keys[(enrollment_id, step_id)]
            mails.append((email, {
                "student_name": name,
                "course_code": code,
                "course_title": course_title,
                "step_label": label,
                "step_title": step_title,
                "class_id": class_id,
                "class_title": class_title,
                "starts_at": starts_at.isoformat(),
                "timezone": student_tz or class_tz or course_tz,
                "options": [{"class_id": c[0], "class_title": c[1], "starts_at": c[2].isoformat()}
                            for c in classes[:OPTIONS_LISTED]],
            }, f"reminder:{enrollment_id}:{step_id}:{key}", enrollment_id))
        queued += add_mails(session=session, template="step_reminder", mails=mails)
    if queued:
        log.info("queued %d step reminder(s)", queued)
    return queued


CHUNK = 1000


def _log_once_many(session: Session, keys: dict[tuple[int, int], str], now: datetime) -> set[tuple[int, int]]:
    """Insert reminder_log rows; returns the (enrollment, step) pairs not reminded in that window before."""
    insert = upsert_insert(session)
    table = ReminderLog.__table__
    fresh: set[tuple[int, int]] = set()
    items = list(keys.items())
    for start in range(0, len(items), 500):
        rows = [dict(enrollment_id=e, step_id=s, window_key=k, created_at=now) for (e, s), k in items[start:start + 500]]
        result = session.execute(
            insert(table).values(rows)
            .on_conflict_do_nothing(index_elements=["enrollment_id", "step_id", "window_key"])
            .returning(table.c.enrollment_id, table.c.step_id)
        )
        fresh.update((e, s) for e, s in result.all())
    return fresh
