"""The platform calendar's view of our mirrored classes: which course steps each class serves."""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import ProgramStatus
from db.models import CourseProgram, CourseStep, CourseStepOption, GroupClass
from tasks.catalog.services import bookable_seats

MAX_WINDOW = timedelta(days=366)
MAX_CLASSES = 2000


def classes_between(*, session: Session, start: datetime, end: datetime,
                    limit: int | None = None) -> tuple[list[dict[str, Any]], datetime | None]:
    """Mirrored classes starting in [start, end), in start order, each with `course_steps` and `seats_left`,
    and where the rest begins: None when every class of the window is listed, else the start time to ask from
    next. A page holds at most `limit` classes and ends before a start time it could not list whole, so the
    next page (from that time) repeats none and misses none; when more than `limit` classes start at one
    instant, the page is that instant's classes, all of them.

    A class serving no step of a published course has `course_steps: []` (a plain class).
    """
    limit = limit or MAX_CLASSES
    classes = list(session.scalars(
        select(GroupClass).where(GroupClass.starts_at >= start, GroupClass.starts_at < end)
        .order_by(GroupClass.starts_at, GroupClass.id).limit(limit + 1)
    ))
    rest = None
    if len(classes) > limit:
        rest = classes[limit].starts_at
        whole = [c for c in classes[:limit] if c.starts_at < rest]
        if not whole:  # more than a page starts at one instant: that instant whole, however many, and on from
            # the next start time in the window (None when there is none: the page then held the rest of it)
            whole = list(session.scalars(select(GroupClass).where(GroupClass.starts_at == rest)
                                         .order_by(GroupClass.id)))
            rest = session.scalar(select(GroupClass.starts_at).where(GroupClass.starts_at > rest,
                                                                     GroupClass.starts_at < end)
                                  .order_by(GroupClass.starts_at).limit(1))
        classes = whole
    tags: dict[str, list[dict[str, Any]]] = defaultdict(list)
    if classes:
        rows = session.execute(
            select(CourseStepOption.group_class_id, CourseProgram.code, CourseStep.id, CourseStep.label,
                   CourseStep.position)
            .join(CourseStep, CourseStep.id == CourseStepOption.step_id)
            .join(CourseProgram, CourseProgram.id == CourseStepOption.program_id)
            .where(CourseStepOption.group_class_id.in_([c.id for c in classes]),
                   CourseStepOption.deleted_at.is_(None), CourseStep.deleted_at.is_(None),
                   CourseProgram.deleted_at.is_(None), CourseProgram.status == ProgramStatus.PUBLISHED)
            .order_by(CourseProgram.code, CourseStep.position)
        )
        for class_id, code, step_id, label, position in rows:
            tags[class_id].append({"course_code": code, "course_step_id": step_id, "label": label,
                                   "position": position})
    return [
        {
            "class_id": c.id,
            "title": c.title,
            "starts_at": c.starts_at.isoformat(),
            "ends_at": c.ends_at.isoformat() if c.ends_at else None,
            "timezone": c.timezone,
            "status": c.status.value,
            "capacity": c.capacity,
            "seats_taken": c.seats_taken,
            "seats_left": bookable_seats(c),
            "course_steps": tags.get(c.id, []),
        }
        for c in classes
    ], rest
