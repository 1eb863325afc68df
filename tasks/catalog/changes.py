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

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, func, select
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

MAX_LISTED = 200  # students listed per step or option; the counts are always whole


@dataclass
class Blocked:
    """One part of the change the real save refuses (409 `step_in_use`)."""

    field: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": "step_in_use", "field": self.field, "message": self.message}


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
    enrollments: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def changes_anything(self) -> bool:
        return bool(not self.exists or self.fields or self.options or self.bundle
                    or any(s["change"] != "unchanged" for s in self.steps))

    def summary(self) -> dict[str, int]:
        return {"steps_changed": sum(s["change"] != "unchanged" for s in self.steps),
                "options_changed": len(self.options), "enrollments_affected": len(self.enrollments),
                "blocked": len(self.blocked)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code, "exists": self.exists, "status": self.status,
            "would_apply": not self.blocked, "changes_anything": self.changes_anything,
            "summary": self.summary(), "fields": self.fields, "steps": self.steps, "options": self.options,
            "bundle": self.bundle, "blocked": [b.as_dict() for b in self.blocked],
            "enrollments": sorted(self.enrollments.values(), key=lambda e: e["enrollment_id"])[:MAX_LISTED],
        }


def course_change(*, session: Session, course: CourseIn) -> CourseChange:
    """What saving `course` (validated, its code set) would change and whom it would touch. Reads only."""
    assert course.code is not None
    program = live_program(session, course.code)
    if program is None:
        return CourseChange(code=course.code, exists=False, status=None)
    change = CourseChange(code=course.code, exists=True, status=program.status.value)
    holders = _Holders(session, program)
    change.fields = _fields(program, course)
    _steps(session, program, course, change, holders)
    _options(session, program, course, change, holders)
    _bundle(session, program, course, change, holders)
    return change


# --------------------------------------------------------------------------- the parts


@dataclass
class _Holder:
    enrollment_id: int
    student_id: str
    status: EnrollmentStatus


def _holding(program: CourseProgram) -> tuple:
    return StudentCourseEnrollment.program_id == program.id, StudentCourseEnrollment.status.in_(HOLDERS)


class _Holders:
    """The course's holding enrollments and their progress, read as plain rows when, and as far as, a part of
    the change needs them: a course may have hundreds of thousands, and an edit of its texts or price needs
    none of them. No list of their ids is sent back to the database."""

    def __init__(self, session: Session, program: CourseProgram) -> None:
        self._session, self._program = session, program
        self._enrollments: dict[int, _Holder] | None = None
        self._counts: dict[int, tuple[int, int]] | None = None
        self._progress: dict[int, list[Row]] = {}

    @property
    def enrollments(self) -> dict[int, _Holder]:
        if self._enrollments is None:
            enrollment = StudentCourseEnrollment
            self._enrollments = {eid: _Holder(eid, student_id, status) for eid, student_id, status in self._session.execute(
                select(enrollment.id, enrollment.student_id, enrollment.status).where(*_holding(self._program))
                .order_by(enrollment.id))}
        return self._enrollments

    def count(self) -> int:
        if self._enrollments is not None:
            return len(self._enrollments)
        return self._session.scalar(select(func.count()).select_from(StudentCourseEnrollment)
                                    .where(*_holding(self._program))) or 0

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

    def progress(self, step_id: int) -> list[Row]:
        """The step's progress rows among holding enrollments, each with its enrollment's student and status."""
        if step_id not in self._progress:
            row, enrollment = StudentCourseProgress, StudentCourseEnrollment
            self._progress[step_id] = list(self._session.execute(
                select(row.enrollment_id, row.status, row.booking_id, row.group_class_id, enrollment.student_id,
                       enrollment.status.label("enrollment_status"))
                .join(enrollment, enrollment.id == row.enrollment_id)
                .where(row.step_id == step_id, *_holding(self._program)).order_by(row.enrollment_id)))
        return self._progress[step_id]


def _holder(row: Row) -> _Holder:
    return _Holder(row.enrollment_id, row.student_id, row.enrollment_status)


def _touch(change: CourseChange, holder: _Holder, effect: str) -> None:
    entry = change.enrollments.setdefault(holder.enrollment_id, {
        "enrollment_id": holder.enrollment_id, "student_id": holder.student_id, "status": holder.status.value,
        "effects": []})
    entry["effects"].append(effect)


def _listed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return rows[:MAX_LISTED]


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
            students = [_progress_entry(r) for r in rows]
            removal = step_removal(session, step, label)
            entry = {"label": label, "step_id": step.id, "change": "removed", "from_position": step.position,
                     "to_position": None, "enrollments": removal.progress_rows, "bookings": removal.bookings,
                     "students": _listed(students)}
            if removal.refusal:
                change.blocked.append(Blocked("steps", removal.refusal))
                for r in rows:
                    _touch(change, _holder(r), f"step {label}: would lose it ({r.status.value}) — refused")
            change.steps.append(entry)
            continue
        moved = step.position != wanted[label]
        data = course.steps[wanted[label] - 1]
        edited = (step.title, step.summary) != (data.title, data.summary)
        held, booked = holders.counts(step.id)
        entry = {"label": label, "step_id": step.id,
                 "change": "moved" if moved else ("edited" if edited else "unchanged"),
                 "from_position": step.position, "to_position": wanted[label], "enrollments": held,
                 "bookings": booked, "students": []}
        if moved:
            rows = holders.progress(step.id)
            entry["students"] = _listed([_progress_entry(r) for r in rows])
            for r in rows:
                _touch(change, _holder(r),
                       f"step {label}: position {step.position} → {wanted[label]} ({r.status.value}; kept)")
        change.steps.append(entry)
    for label, position in wanted.items():
        if label in existing:
            continue
        owed = [h for h in holders.enrollments.values() if h.status in OWED_NEW_STEPS]
        completed = [h for h in holders.enrollments.values() if h.status is EnrollmentStatus.COMPLETED]
        change.steps.append({"label": label, "step_id": None, "change": "added", "from_position": None,
                             "to_position": position, "enrollments": len(owed), "bookings": 0,
                             "completed_enrollments": len(completed),
                             "students": _listed([{"enrollment_id": h.enrollment_id, "student_id": h.student_id,
                                                   "progress": "unbooked (new)"} for h in owed])})
        for h in owed:
            _touch(change, h, f"step {label}: added, unbooked")
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
        active = list(session.scalars(select(Booking).where(
            Booking.class_id == class_id, Booking.course_step_id == step.id, Booking.status == BookingStatus.ACTIVE)
            .order_by(Booking.id)))
        history = holders.history(step.id, class_id)
        entry = {"class_id": class_id, "step": label, "change": "detached", "active_bookings": len(active),
                 "students": _listed([{"enrollment_id": b.enrollment_id, "student_id": b.student_id,
                                       "booking_id": b.id} for b in active]),
                 "history_kept": history}
        if active:
            change.blocked.append(Blocked("steps", f"steps: class {class_id!r} of step {label!r} cannot be removed: "
                                          f"{len(active)} active booking(s) use it"))
            for b in active:
                holder = holders.enrollments.get(b.enrollment_id) if b.enrollment_id else None
                if holder is not None:
                    _touch(change, holder, f"step {label}: booking {b.id} of class {class_id} — detach refused")
        change.options.append(entry)
    for class_id, label in sorted(want - have):
        step = by_label.get(label)
        open_rows = [r for r in holders.progress(step.id) if r.status is ProgressStatus.UNBOOKED] \
            if step is not None else []
        change.options.append({"class_id": class_id, "step": label, "change": "attached",
                               "may_book": len(open_rows),
                               "students": _listed([_progress_entry(r) for r in open_rows])})
        for r in open_rows:
            _touch(change, _holder(r), f"step {label}: may now book class {class_id}")


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
