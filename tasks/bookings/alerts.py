"""Admin alerts on seats: one alert per crossing of `LOW_SEAT_THRESHOLD`, cleared on recovery.

`course_step_option.low_seat_alerted_at` is the crossing's memory: set (with an `alert_log` row and
a `low_seat_alert` mail to `@admins`) when an option's class drops to or under the threshold, left
alone while it stays there, cleared once the class recovers above it, so the next drop alerts again,
or once the class has started or is cancelled.
The option rows are locked (FOR UPDATE on PostgreSQL; SQLite serializes writers) so two checks of the
same class — a `class.upserted` and the periodic scan — never both alert.
"""
from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from db.enums import ClassStatus, EnrollmentStatus, ProgramStatus
from db.models import AlertLog, CourseProgram, CourseStep, CourseStepOption, GroupClass, StudentCourseEnrollment
from db.types import utcnow
from tasks.messaging.outbox import ADMINS, add_mail

# LOW_SEAT_THRESHOLD when unset: seats left at or under which an option alerts
DEFAULT_LOW_SEAT_THRESHOLD = 3

log = logging.getLogger("coursepipe.alerts")

LOW_SEAT = "low_seat"


def _watched():
    """An option is watched if its course is published or has an active enrollment."""
    active = exists().where(
        StudentCourseEnrollment.program_id == CourseProgram.id,
        StudentCourseEnrollment.status == EnrollmentStatus.ACTIVE,
    )
    return or_(CourseProgram.status == ProgramStatus.PUBLISHED, active)


def check_low_seats(*, session: Session, class_id: str | None, threshold: int, now: datetime | None = None) -> int:
    """Alert on options that crossed to or under `threshold`; clear recovered ones. Returns alerts raised.

    `class_id` limits the check to one class (the `class.upserted` handler); None scans every option of a class
    still to come. A flag on a class that started or was cancelled is cleared first (one statement): it has
    nothing left to alert about, and the scan never reads the options of classes gone by.
    """
    now = now or utcnow()
    postgres = session.get_bind().dialect.name == "postgresql"
    _forget_ended(session, class_id=class_id, now=now, lock=postgres)
    query = (
        select(CourseStepOption, CourseStep, CourseProgram, GroupClass)
        .join(CourseStep, CourseStep.id == CourseStepOption.step_id)
        .join(CourseProgram, CourseProgram.id == CourseStepOption.program_id)
        .join(GroupClass, GroupClass.id == CourseStepOption.group_class_id)
        .where(
            CourseStepOption.deleted_at.is_(None),
            GroupClass.status == ClassStatus.SCHEDULED, GroupClass.starts_at > now,
            or_(
                and_(CourseStep.deleted_at.is_(None), CourseProgram.deleted_at.is_(None), _watched()),
                CourseStepOption.low_seat_alerted_at.is_not(None),  # so a flag can always be cleared
            ),
        )
        .order_by(CourseStepOption.id)
    )
    if class_id is not None:
        query = query.where(CourseStepOption.group_class_id == class_id)
    if postgres:
        query = query.with_for_update(of=CourseStepOption)
    raised = 0
    for option, step, program, group_class in session.execute(query).all():
        seats_left = group_class.seats_left
        if seats_left > threshold:
            if option.low_seat_alerted_at is not None:
                option.low_seat_alerted_at = None  # recovered: the next drop is a new crossing
                log.info("low seats recovered on %s %s (%d left)", step.label, group_class.id, seats_left)
            continue
        if option.low_seat_alerted_at is not None:
            continue  # still low: already alerted for this crossing
        live = (
            step.deleted_at is None
            and program.deleted_at is None
            and group_class.status is ClassStatus.SCHEDULED
            and group_class.starts_at > now
        )
        if not live or not _is_watched(session, program):
            continue
        option.low_seat_alerted_at = now
        _raise_alert(session, option, step, program, group_class, threshold, now)
        raised += 1
    session.flush()
    return raised


def _forget_ended(session: Session, *, class_id: str | None, now: datetime, lock: bool) -> int:
    """Clear the flags of options whose class started or was cancelled (locked in id order, as the scan locks)."""
    ended = select(GroupClass.id).where(or_(GroupClass.status != ClassStatus.SCHEDULED, GroupClass.starts_at <= now))
    flagged = (select(CourseStepOption.id)
               .where(CourseStepOption.low_seat_alerted_at.is_not(None), CourseStepOption.group_class_id.in_(ended))
               .order_by(CourseStepOption.id))
    if class_id is not None:
        flagged = flagged.where(CourseStepOption.group_class_id == class_id)
    if lock:
        session.execute(flagged.with_for_update()).all()
    return session.execute(update(CourseStepOption).where(CourseStepOption.id.in_(flagged))
                           .values(low_seat_alerted_at=None).execution_options(synchronize_session=False)).rowcount


def _is_watched(session: Session, program: CourseProgram) -> bool:
    if program.status is ProgramStatus.PUBLISHED:
        return True
    return session.scalar(
        select(exists().where(StudentCourseEnrollment.program_id == program.id,
                              StudentCourseEnrollment.status == EnrollmentStatus.ACTIVE))
    )


def _raise_alert(session, option, step, program, group_class, threshold: int, now: datetime) -> None:
    details = {
        "course_code": program.code,
        "course_title": program.title,
        "step_label": step.label,
        "course_step_id": step.id,
        "option_id": option.id,
        "class_id": group_class.id,
        "class_title": group_class.title,
        "starts_at": group_class.starts_at.isoformat(),
        "timezone": group_class.timezone or program.timezone,
        "seats_left": group_class.seats_left,
        "capacity": group_class.capacity,
        "threshold": threshold,
    }
    alert = AlertLog(kind=LOW_SEAT, dedupe_key=f"{LOW_SEAT}:{option.id}:{now.isoformat()}",
                     subject=f"class:{group_class.id}", details=details, created_at=now)
    session.add(alert)
    session.flush()
    add_mail(session=session, template="low_seat_alert", recipient=ADMINS, context=details,
             dedupe_key=f"{LOW_SEAT}:{option.id}:{alert.id}")
    log.info("low seats on %s %s: %d left (threshold %d)", step.label, group_class.id,
             group_class.seats_left, threshold)
