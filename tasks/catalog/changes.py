"""The what-if of a course edit: who a change to a (published) course would touch, and whether it may apply.

What a saved change does to the enrollments a course already has (`save_course` applies it; this module
answers it beforehand and changes nothing):
- **Reordering.** Progress rows and bookings point at the step by id, never by position: a moved step
  keeps every student's progress and booking; only the order shown, reminders and the "skipped ahead"
  flag of later bookings follow the new order.
- **Adding a step.** Every active or suspended enrollment is owed it: an unbooked progress row is created
  with the change. A completed enrollment stays completed; booking the new step reopens it.
- **Removing a step.** Refused while any enrollment has a progress row for it or any booking names it:
  it is part of what they bought. A step nobody holds is removed.
- **Attaching an option.** Students whose progress of that step is unbooked may book the class at once.
- **Detaching an option.** Refused while an active booking holds that class for that step (the student
  would hold a seat the course no longer lists); past bookings and completed progress keep their record.
  Moving a class to another step is a detach plus an attach.
- **Bundle.** Applies to new purchases only: every enrollment keeps the bundle recorded when it was
  bought (an enrollment without that record gets the old bundle written on it with the change).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, Select, func, select, union
from sqlalchemy.orm import Session

from db.enums import BookingStatus, EnrollmentStatus, ProgramStatus, ProgressStatus
from db.models import Booking, CourseProgram, StudentCourseEnrollment, StudentCourseProgress
from tasks.catalog.services import (
    BUNDLE_UNRECORDED,
    HOLDERS,
    OWED_NEW_STEPS,
    CourseIn,
    live_bundle,
    live_options,
    bundle_summary,
    live_program,
    live_steps,
    step_removal,
)

MAX_LISTED = 200  # students listed per step or option, and enrollments listed; the counts are always whole


@dataclass
class Blocked:
    """One part of the change the real save refuses (409 `step_in_use`)."""

    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": "step_in_use", "field": self.field, "message": self.message}


@dataclass
class _Touch:
    """The enrollments one part of the change touches, as a query (never read whole: a course may hold a
    million) of rows with `enrollment_id`, `student_id` and `enrollment_status`, and what it does to each row's."""

    rows: Select
    effect: Callable[[Row], str]


@dataclass
class CourseChange:
    code: str
    exists: bool
    status: str | None
    fields: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    options: list[dict[str, Any]] = field(default_factory=list)
    bundle: dict[str, Any] | None = None
    blocked: list[Blocked] = field(default_factory=list)
    detail: bool = True  # False: only what `summary` needs (no per-step figures, no lists)
    affected: int = 0  # enrollments any part touches, each counted once
    enrollments: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_LISTED of them by id
    touches: list[_Touch] = field(default_factory=list, repr=False)

    @property
    def changes_anything(self) -> bool:
        return bool(not self.exists or self.fields or self.options or self.bundle
                    or any(s["change"] != "unchanged" for s in self.steps))

    def summary(self) -> dict[str, int]:
        return {"steps_changed": sum(s["change"] != "unchanged" for s in self.steps),
                "options_changed": len(self.options), "enrollments_affected": self.affected,
                "blocked": len(self.blocked)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "exists": self.exists, "status": self.status,
            "would_apply": not self.blocked, "changes_anything": self.changes_anything,
            "summary": self.summary(), "fields": self.fields, "steps": self.steps, "options": self.options,
            "bundle": self.bundle, "blocked": [b.as_dict() for b in self.blocked], "enrollments": self.enrollments,
        }


def course_change(*, session: Session, course: CourseIn, detail: bool = True) -> CourseChange:
    """What saving `course` (validated, its code set) would change and whom it would touch. Reads only.

    Every figure is counted by the database and every list read with a limit, so the answer costs a few
    statements however many enrollments the course holds. `detail=False` answers only the summary (what a
    save records): the per-step figures and the lists, which read every progress row of the course, are left
    out."""
    assert course.code is not None
    program = live_program(session, course.code)
    if program is None:
        return CourseChange(code=course.code, exists=False, status=None, detail=detail)
    change = CourseChange(code=course.code, exists=True, status=program.status.value, detail=detail)
    holders = _Holders(session, program)
    change.fields = _fields(program, course)
    _steps(session, program, course, change, holders)
    _options(session, program, course, change, holders)
    _bundle(session, program, course, change, holders)
    _tally(session, change)
    return change


# --------------------------------------------------------------------------- the parts


def _holding(program: CourseProgram) -> tuple:
    return StudentCourseEnrollment.program_id == program.id, StudentCourseEnrollment.status.in_(HOLDERS)


class _Holders:
    """The course's holding enrollments and their progress, counted by the database or given as queries: a
    course may have a million, and an edit of its texts or price needs none of them. No list of their ids is
    sent back to the database."""

    def __init__(self, session: Session, program: CourseProgram) -> None:
        self._session, self._program = session, program
        self._statuses: dict[EnrollmentStatus, int] | None = None
        self._counts: dict[int, tuple[int, int]] | None = None

    def statuses(self) -> dict[EnrollmentStatus, int]:
        """Holding enrollments by status."""
        if self._statuses is None:
            enrollment = StudentCourseEnrollment
            self._statuses = {status: n for status, n in self._session.execute(
                select(enrollment.status, func.count()).where(*_holding(self._program)).group_by(enrollment.status))}
        return self._statuses

    def count(self) -> int:
        return sum(self.statuses().values())

    def counts(self, step_id: int) -> tuple[int, int]:
        """(progress rows, booked ones) of the step among holding enrollments, counted by the database."""
        if self._counts is None:
            row = StudentCourseProgress
            self._counts = {sid: (n, booked) for sid, n, booked in self._session.execute(
                select(row.step_id, func.count(), func.count().filter(row.status == ProgressStatus.BOOKED))
                .join(StudentCourseEnrollment, StudentCourseEnrollment.id == row.enrollment_id)
                .where(*_holding(self._program)).group_by(row.step_id))}
        return self._counts.get(step_id, (0, 0))

    def history(self, step_id: int, class_id: str) -> int:
        """Progress rows of the step that name this class and are past booking (completed, missed, cancelled),
        counted by the database: what a detached class leaves on record."""
        row = StudentCourseProgress
        return self._session.scalar(
            select(func.count()).select_from(row)
            .join(StudentCourseEnrollment, StudentCourseEnrollment.id == row.enrollment_id)
            .where(row.step_id == step_id, row.group_class_id == class_id, row.status != ProgressStatus.BOOKED,
                   *_holding(self._program))) or 0

    def owed(self) -> Select:
        """The enrollments a new step is owed to (`tasks.catalog.services.OWED_NEW_STEPS`)."""
        enrollment = StudentCourseEnrollment
        return select(enrollment.id.label("enrollment_id"), enrollment.student_id,
                      enrollment.status.label("enrollment_status")).where(
            enrollment.program_id == self._program.id, enrollment.status.in_(OWED_NEW_STEPS))

    def progress(self, step_id: int, *where: Any) -> Select:
        """The step's progress rows among holding enrollments, each with its enrollment's student and status."""
        row, enrollment = StudentCourseProgress, StudentCourseEnrollment
        return (select(row.enrollment_id, row.status, row.booking_id, row.group_class_id, enrollment.student_id,
                       enrollment.status.label("enrollment_status"))
                .join(enrollment, enrollment.id == row.enrollment_id)
                .where(row.step_id == step_id, *_holding(self._program), *where))

    def bookings(self, step_id: int, class_id: str) -> Select:
        """Active bookings of the class for the step whose enrollment holds the course."""
        enrollment = StudentCourseEnrollment
        return (select(Booking.enrollment_id, enrollment.student_id, enrollment.status.label("enrollment_status"),
                       Booking.id.label("booking_id"))
                .join(enrollment, enrollment.id == Booking.enrollment_id)
                .where(Booking.class_id == class_id, Booking.course_step_id == step_id,
                       Booking.status == BookingStatus.ACTIVE, *_holding(self._program)))


def _first(session: Session, rows: Select) -> list[Row]:
    """The first MAX_LISTED rows of a touch's query, by enrollment id."""
    sub = rows.subquery()
    return list(session.execute(select(sub).order_by(sub.c.enrollment_id).limit(MAX_LISTED)))


def _count(session: Session, rows: Select) -> int:
    return session.scalar(select(func.count()).select_from(rows.subquery())) or 0


def _tally(session: Session, change: CourseChange) -> None:
    """How many enrollments the change touches (each once), and what it does to the first MAX_LISTED by id."""
    if not change.touches:
        return
    ids = [select(t.rows.subquery().c.enrollment_id) for t in change.touches]
    every = (union(*ids) if len(ids) > 1 else ids[0]).subquery()
    change.affected = session.scalar(select(func.count()).select_from(every)) or 0
    if not change.detail or not change.affected:
        return
    first = list(session.scalars(select(every.c.enrollment_id).order_by(every.c.enrollment_id).limit(MAX_LISTED)))
    listed: dict[int, dict[str, Any]] = {}
    for touch in change.touches:  # in the order the parts were described: a student's effects read alike
        sub = touch.rows.subquery()
        order = [sub.c.enrollment_id, *([sub.c.booking_id] if "booking_id" in sub.c else [])]
        for row in session.execute(select(sub).where(sub.c.enrollment_id.in_(first)).order_by(*order)):
            entry = listed.setdefault(row.enrollment_id, {
                "enrollment_id": row.enrollment_id, "student_id": row.student_id,
                "status": EnrollmentStatus(row.enrollment_status).value, "effects": []})
            entry["effects"].append(touch.effect(row))
    change.enrollments = [listed[eid] for eid in sorted(listed)]


def _fields(program: CourseProgram, course: CourseIn) -> list[dict[str, Any]]:
    pairs = [("title", program.title, course.title), ("description", program.description, course.description),
             ("marketing_copy", program.marketing_copy, course.marketing_copy),
             ("timezone", program.timezone, course.timezone),
             ("price", {"amount": program.price_amount, "currency": program.price_currency},
              {"amount": course.price.amount, "currency": course.price.currency})]
    fields = [{"field": name, "from": old, "to": new} for name, old, new in pairs if old != new]
    for entry in fields:
        if entry["field"] in ("title", "price") and program.status is ProgramStatus.PUBLISHED:
            entry["note"] = ("new purchases only: Stripe gets it at the next publish; "
                             "enrollments keep what they paid")
    return fields


def _steps(session: Session, program: CourseProgram, course: CourseIn, change: CourseChange,
           holders: _Holders) -> None:
    existing = {s.label: s for s in live_steps(session, program.id)}
    wanted = {s.label: i + 1 for i, s in enumerate(course.steps)}
    for label, step in existing.items():
        if label not in wanted:
            rows = holders.progress(step.id)
            removal = step_removal(session, step, label)
            entry = {"label": label, "step_id": step.id, "change": "removed", "from_position": step.position,
                     "to_position": None, "enrollments": removal.progress_rows, "bookings": removal.bookings,
                     "students": [_progress_entry(r) for r in _first(session, rows)]
                     if change.detail and removal.progress_rows else []}
            if removal.refusal:
                change.blocked.append(Blocked("steps", removal.refusal))
                change.touches.append(_Touch(rows, lambda r, label=label:
                                             f"step {label}: would lose it ({r.status.value}) — refused"))
            change.steps.append(entry)
            continue
        moved = step.position != wanted[label]
        data = course.steps[wanted[label] - 1]
        edited = (step.title, step.summary) != (data.title, data.summary)
        held, booked = holders.counts(step.id) if change.detail else (None, None)
        entry = {"label": label, "step_id": step.id,
                 "change": "moved" if moved else ("edited" if edited else "unchanged"),
                 "from_position": step.position, "to_position": wanted[label], "enrollments": held,
                 "bookings": booked, "students": []}
        if moved:
            rows = holders.progress(step.id)
            if held:
                entry["students"] = [_progress_entry(r) for r in _first(session, rows)]
            change.touches.append(_Touch(rows, lambda r, label=label, moves=f"{step.position} → {wanted[label]}":
                                         f"step {label}: position {moves} ({r.status.value}; kept)"))
        change.steps.append(entry)
    for label, position in wanted.items():
        if label in existing:
            continue
        statuses = holders.statuses()
        owed = sum(statuses.get(status, 0) for status in OWED_NEW_STEPS)
        change.steps.append({"label": label, "step_id": None, "change": "added", "from_position": None,
                             "to_position": position, "enrollments": owed, "bookings": 0,
                             "completed_enrollments": statuses.get(EnrollmentStatus.COMPLETED, 0),
                             "students": [{"enrollment_id": r.enrollment_id, "student_id": r.student_id,
                                           "progress": "unbooked (new)"} for r in _first(session, holders.owed())]
                             if change.detail and owed else []})
        change.touches.append(_Touch(holders.owed(), lambda r, label=label: f"step {label}: added, unbooked"))
    change.steps.sort(key=lambda s: (s["to_position"] is None, s["to_position"] or 0, s["from_position"] or 0))


def _progress_entry(row: Row) -> dict[str, Any]:
    return {"enrollment_id": row.enrollment_id, "student_id": row.student_id, "progress": row.status.value,
            "booking_id": row.booking_id, "class_id": row.group_class_id}


def _options(session: Session, program: CourseProgram, course: CourseIn, change: CourseChange,
             holders: _Holders) -> None:
    steps = {s.id: s for s in live_steps(session, program.id)}
    by_label = {s.label: s for s in steps.values()}
    have = {(o.group_class_id, steps[o.step_id].label) for o in live_options(session, program.id)
            if o.step_id in steps}
    want = {(class_id, s.label) for s in course.steps for class_id in s.options}
    removed_labels = {label for label in by_label if label not in {s.label for s in course.steps}}
    for class_id, label in sorted(have - want):
        if label in removed_labels:
            continue  # goes with its step (reported there)
        step = by_label[label]
        active = select(Booking).where(Booking.class_id == class_id, Booking.course_step_id == step.id,
                                       Booking.status == BookingStatus.ACTIVE)
        held = _count(session, active)
        history = holders.history(step.id, class_id)
        entry = {"class_id": class_id, "step": label, "change": "detached", "active_bookings": held,
                 "students": [{"enrollment_id": b.enrollment_id, "student_id": b.student_id, "booking_id": b.id}
                              for b in session.scalars(active.order_by(Booking.id).limit(MAX_LISTED))]
                 if change.detail and held else [],
                 "history_kept": history}
        if held:
            change.blocked.append(Blocked("steps", f"steps: class {class_id!r} of step {label!r} cannot be removed: "
                                          f"{held} active booking(s) use it"))
            change.touches.append(_Touch(holders.bookings(step.id, class_id), lambda r, label=label, class_id=class_id:
                                         f"step {label}: booking {r.booking_id} of class {class_id} — detach refused"))
        change.options.append(entry)
    for class_id, label in sorted(want - have):
        step = by_label.get(label)
        entry = {"class_id": class_id, "step": label, "change": "attached", "may_book": 0, "students": []}
        change.options.append(entry)
        if step is None:
            continue  # a step added by this edit: nobody holds it yet
        open_rows = holders.progress(step.id, StudentCourseProgress.status == ProgressStatus.UNBOOKED)
        entry["may_book"] = _count(session, open_rows) if change.detail else None
        if entry["may_book"]:
            entry["students"] = [_progress_entry(r) for r in _first(session, open_rows)]
        change.touches.append(_Touch(open_rows, lambda r, label=label, class_id=class_id:
                                     f"step {label}: may now book class {class_id}"))


def _bundle(session: Session, program: CourseProgram, course: CourseIn, change: CourseChange,
            holders: _Holders) -> None:
    old = bundle_summary(live_bundle(session, program.id))
    new = bundle_summary(course.bundle)
    if old == new:
        return
    unrecorded = session.scalar(select(func.count()).select_from(StudentCourseEnrollment)
                                .where(*_holding(program), BUNDLE_UNRECORDED)) or 0
    change.bundle = {"from": old, "to": new, "applies_to": "new purchases",
                     "enrollments_keeping_theirs": holders.count(),
                     "records_written": unrecorded}
