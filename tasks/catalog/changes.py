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

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.enums import BookingStatus, EnrollmentStatus, ProgramStatus, ProgressStatus
from db.models import Booking, CourseProgram, StudentCourseEnrollment, StudentCourseProgress
from tasks.catalog.services import (
    HOLDERS,
    OWED_NEW_STEPS,
    CourseIn,
    live_bundle,
    live_options,
    bundle_summary,
    live_program,
    live_steps,
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
    holders = _holders(session, program)
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
    has_bundle_record: bool


@dataclass
class _Holders:
    enrollments: dict[int, _Holder]
    progress: dict[int, list[StudentCourseProgress]]  # step id → progress rows of holding enrollments


def _holders(session: Session, program: CourseProgram) -> _Holders:
    rows = session.scalars(select(StudentCourseEnrollment).where(
        StudentCourseEnrollment.program_id == program.id, StudentCourseEnrollment.status.in_(HOLDERS))
        .order_by(StudentCourseEnrollment.id))
    enrollments = {e.id: _Holder(e.id, e.student_id, e.status,
                                 (e.fulfilment_metadata or {}).get("bundle") is not None) for e in rows}
    progress: dict[int, list[StudentCourseProgress]] = defaultdict(list)
    if enrollments:
        for row in session.scalars(select(StudentCourseProgress).where(
                StudentCourseProgress.enrollment_id.in_(list(enrollments)))
                .order_by(StudentCourseProgress.enrollment_id)):
            progress[row.step_id].append(row)
    return _Holders(enrollments, progress)


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
        rows = holders.progress.get(step.id, [])
        students = [_progress_entry(holders, r) for r in rows]
        if label not in wanted:
            bookings = list(session.scalars(select(Booking).where(Booking.course_step_id == step.id)
                                            .order_by(Booking.id)))
            # any progress row counts, a revoked enrollment's too: its history names the step
            had = session.scalar(select(func.count()).select_from(StudentCourseProgress)
                                 .where(StudentCourseProgress.step_id == step.id)) or 0
            entry = {"label": label, "step_id": step.id, "change": "removed", "from_position": step.position,
                     "to_position": None, "enrollments": had, "bookings": len(bookings),
                     "students": _listed(students)}
            if had or bookings:
                change.blocked.append(Blocked("steps", f"steps: step {label!r} cannot be removed: {had} "
                                              "enrollment(s) already have it"
                                              + (f" and {len(bookings)} booking(s) name it" if bookings else "")))
                for r in rows:
                    _touch(change, holders.enrollments[r.enrollment_id],
                           f"step {label}: would lose it ({r.status.value}) — refused")
            change.steps.append(entry)
            continue
        moved = step.position != wanted[label]
        data = course.steps[wanted[label] - 1]
        edited = (step.title, step.summary) != (data.title, data.summary)
        entry = {"label": label, "step_id": step.id,
                 "change": "moved" if moved else ("edited" if edited else "unchanged"),
                 "from_position": step.position, "to_position": wanted[label], "enrollments": len(rows),
                 "bookings": sum(1 for r in rows if r.status is ProgressStatus.BOOKED),
                 "students": _listed(students) if moved else []}
        if moved:
            for r in rows:
                _touch(change, holders.enrollments[r.enrollment_id],
                       f"step {label}: position {step.position} → {wanted[label]} ({r.status.value}; kept)")
        change.steps.append(entry)
    owed = [h for h in holders.enrollments.values() if h.status in OWED_NEW_STEPS]
    for label, position in wanted.items():
        if label in existing:
            continue
        completed = [h for h in holders.enrollments.values() if h.status is EnrollmentStatus.COMPLETED]
        change.steps.append({"label": label, "step_id": None, "change": "added", "from_position": None,
                             "to_position": position, "enrollments": len(owed), "bookings": 0,
                             "completed_enrollments": len(completed),
                             "students": _listed([{"enrollment_id": h.enrollment_id, "student_id": h.student_id,
                                                   "progress": "unbooked (new)"} for h in owed])})
        for h in owed:
            _touch(change, h, f"step {label}: added, unbooked")
    change.steps.sort(key=lambda s: (s["to_position"] is None, s["to_position"] or 0, s["from_position"] or 0))


def _progress_entry(holders: _Holders, row: StudentCourseProgress) -> dict[str, Any]:
    holder = holders.enrollments[row.enrollment_id]
    return {"enrollment_id": holder.enrollment_id, "student_id": holder.student_id, "progress": row.status.value,
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
        history = [r for r in holders.progress.get(step.id, []) if r.group_class_id == class_id
                   and r.status is not ProgressStatus.BOOKED]
        entry = {"class_id": class_id, "step": label, "change": "detached", "active_bookings": len(active),
                 "students": _listed([{"enrollment_id": b.enrollment_id, "student_id": b.student_id,
                                       "booking_id": b.id} for b in active]),
                 "history_kept": len(history)}
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
        open_rows = [r for r in holders.progress.get(step.id, []) if r.status is ProgressStatus.UNBOOKED] \
            if step is not None else []
        change.options.append({"class_id": class_id, "step": label, "change": "attached",
                               "may_book": len(open_rows),
                               "students": _listed([_progress_entry(holders, r) for r in open_rows])})
        for r in open_rows:
            _touch(change, holders.enrollments[r.enrollment_id], f"step {label}: may now book class {class_id}")


def _bundle(session: Session, program: CourseProgram, course: CourseIn, change: CourseChange,
            holders: _Holders) -> None:
    old = bundle_summary(live_bundle(session, program.id))
    new = bundle_summary(course.bundle)
    if old == new:
        return
    unrecorded = [h for h in holders.enrollments.values() if not h.has_bundle_record]
    change.bundle = {"from": old, "to": new, "applies_to": "new purchases",
                     "enrollments_keeping_theirs": len(holders.enrollments),
                     "records_written": len(unrecorded)}
