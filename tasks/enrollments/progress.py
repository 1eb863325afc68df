"""Step progress moves: through `tasks.machines.PROGRESS`, timestamped, and told to the platform.

Every move is logged (`transition_log`) by the machine, stamps the matching timestamp column and
writes one `course_step.progress_changed` platform event in the same transaction.
A re-applied move is a no-op; an impossible one raises `IllegalTransition` (a permanent error: the
event that asked for it ends `failed` with the reason, it is never retried in a loop).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from db.enums import ProgressStatus
from db.models import CourseStep, StudentCourseEnrollment, StudentCourseProgress
from tasks.messaging import outbox
from tasks.machines import PROGRESS


STAMPS = {
    ProgressStatus.BOOKED: "booked_at",
    ProgressStatus.COMPLETED: "completed_at",
    ProgressStatus.MISSED: "missed_at",
    ProgressStatus.CANCELLED: "cancelled_at",
    ProgressStatus.UNBOOKED: "unbooked_at",
}


def move(
    *,
    session: Session,
    progress: StudentCourseProgress,
    target: ProgressStatus,
    cause: str,
    at: datetime,
    enrollment: StudentCourseEnrollment | None = None,
    step: CourseStep | None = None,
    fresh: bool = False,
) -> bool:
    """Move one step's progress to `target` at `at`. Returns False when it was already there.

    `cause` names what moved it (e.g. "booking.cancelled:bk_1") and keys the outbound event, so the
    same cause never tells the platform twice. `enrollment` and `step`, when the caller holds them, are
    not read again; `fresh`: the cause is new in this transaction, so its event cannot exist yet.
    """
    previous = progress.status
    if not PROGRESS.move(progress, target, session=session, cause=cause, enrollment_id=progress.enrollment_id, at=at):
        return False
    setattr(progress, STAMPS[target], at)
    enrollment = enrollment or session.get(StudentCourseEnrollment, progress.enrollment_id)
    step = step if step is not None and step.id == progress.step_id else session.get(CourseStep, progress.step_id)
    outbox.add_platform_event(
        session=session,
        type="course_step.progress_changed",
        data={
            "enrollment_id": progress.enrollment_id,
            "student_id": enrollment.student_id if enrollment else None,
            "course_step_id": progress.step_id,
            "label": step.label if step else None,
            "position": step.position if step else None,
            "from_status": previous.value,
            "status": target.value,
            "booking_id": progress.booking_id,
            "at": at.isoformat(),
        },
        dedupe_key=f"course_step.progress_changed:{progress.id}:{target.value}:{cause}",
        enrollment_id=progress.enrollment_id,
        fresh=fresh,
    )
    return True
