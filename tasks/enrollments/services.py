"""Enrollments: what a fulfilled enrollment is owed, and the moves money makes on it.

`provision` creates only what is missing (a progress row per live step, the bundle's grants), so
fulfilment and re-fulfilment are the same call and never double anything. `revoke`, `suspend` and
`reinstate` move the enrollment through `tasks.machines.ENROLLMENT` and write the outbound
platform event in the same transaction. Nothing here commits.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, insert, select
from sqlalchemy.orm import Session

from db.enums import BookingStatus, BundleKind, CreditType, EnrollmentStatus, LedgerEntryType, ProgressStatus
from db.models import (
    Booking,
    CourseBundleComponent,
    CourseProgram,
    CourseStep,
    CreditLedgerEntry,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.types import utcnow
from tasks.ledger import credits
from tasks.ledger.causes import ENROLLMENT_OWNER, Cause
from tasks.messaging import outbox
from tasks.catalog.services import live_steps
from tasks.enrollments import progress as progress_moves
from tasks.errors import PermanentError
from tasks.machines import ENROLLMENT, PROGRESS


class AlreadyEnrolled(PermanentError):
    """Raised when the student already holds the course: a second sale or a manual enrollment is refused."""


# an enrollment in one of these states has been paid for and is owed its steps and credits
ENTITLED = (EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED, EnrollmentStatus.COMPLETED)
# steps a revocation deactivates; completed ones stay on record
OPEN_STEPS = (ProgressStatus.UNBOOKED, ProgressStatus.BOOKED, ProgressStatus.MISSED)

BUNDLE_CREDIT_TYPES = {BundleKind.PRIVATE_CREDIT: CreditType.PRIVATE, BundleKind.GROUP_CREDIT: CreditType.GROUP}


class NotFulfillable(PermanentError):
    """Raised when re-fulfilment is asked for an enrollment that is not paid for (pending, failed, revoked)."""


def bundle_cause(enrollment_id: int) -> Cause:
    """The ledger cause of an enrollment's bundle grants: one lot per credit type."""
    return Cause.bundle(enrollment_id)


# --------------------------------------------------------------------------- look-ups


def get_enrollment(session: Session, enrollment_id: int, *, lock: bool = False) -> StudentCourseEnrollment | None:
    query = select(StudentCourseEnrollment).where(StudentCourseEnrollment.id == enrollment_id)
    if lock:
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE: see `tasks.ledger.credits.lock_student`
    return session.scalar(query)


def by_checkout_session(session: Session, checkout_session_id: str, *, lock: bool = False):
    query = select(StudentCourseEnrollment).where(
        StudentCourseEnrollment.stripe_checkout_session_id == checkout_session_id
    )
    if lock:
        query = query.with_for_update(key_share=True)
    return session.scalar(query)


def program_of(session: Session, enrollment: StudentCourseEnrollment) -> CourseProgram:
    return session.get(CourseProgram, enrollment.program_id)


def bundle_snapshot(program: CourseProgram, session: Session | None = None) -> list[dict[str, Any]]:
    """The bundle as sold, kept on the enrollment: a later catalog edit does not change what was bought."""
    if session is None:
        components = program.bundle
    else:
        components = session.scalars(select(CourseBundleComponent).where(
            CourseBundleComponent.program_id == program.id, CourseBundleComponent.deleted_at.is_(None))
            .order_by(CourseBundleComponent.id))
    return [{"component_id": c.id, "kind": c.kind.value, "quantity": c.quantity} for c in components]


def sold_bundle(enrollment: StudentCourseEnrollment, program: CourseProgram) -> list[dict[str, Any]]:
    """The bundle the enrollment records (an empty one too: enrolled by hand without it); the live bundle for
    rows made without one."""
    snapshot = (enrollment.fulfilment_metadata or {}).get("bundle")
    return bundle_snapshot(program) if snapshot is None else snapshot


def bundle_owed(enrollment: StudentCourseEnrollment, program: CourseProgram) -> dict[CreditType, int]:
    """Credits by type the purchase included (`sold_bundle`)."""
    return owed_by_snapshot(sold_bundle(enrollment, program))


def owed_by_snapshot(snapshot: list[dict[str, Any]]) -> dict[CreditType, int]:
    owed: dict[CreditType, int] = defaultdict(int)
    for item in snapshot:
        owed[BUNDLE_CREDIT_TYPES[BundleKind(item["kind"])]] += int(item["quantity"])
    return dict(owed)


# --------------------------------------------------------------------------- provisioning


@dataclass
class Provisioned:
    progress_created: list[int] = field(default_factory=list)  # step ids
    credits_granted: dict[str, int] = field(default_factory=dict)  # credit type -> quantity

    @property
    def anything(self) -> bool:
        return bool(self.progress_created or self.credits_granted)

    def as_dict(self) -> dict[str, Any]:
        return {"progress_created": len(self.progress_created), "step_ids": self.progress_created,
                "credits_granted": self.credits_granted}


def provision(*, session: Session, enrollment: StudentCourseEnrollment, program: CourseProgram | None = None,
              cause: str | None = None, fresh: bool = False, steps: list[CourseStep] | None = None) -> Provisioned:
    """Create what an entitled enrollment is owed and lacks. The caller holds the enrollment's row lock.

    A progress row per live step (a step added after the purchase gets one too) and one bundle grant
    per credit type (keyed by the enrollment, so a grant can never be issued twice).
    """
    done = Provisioned()
    if enrollment.status not in ENTITLED:
        return done
    program = program or program_of(session, enrollment)
    # `fresh`: the enrollment row was inserted in this transaction, so it has nothing yet
    have = set() if fresh else set(session.scalars(select(StudentCourseProgress.step_id)
                                                   .where(StudentCourseProgress.enrollment_id == enrollment.id)))
    steps = live_steps(session, program.id) if steps is None else steps
    missing = [step.id for step in steps if step.id not in have]
    if missing:
        now = utcnow()
        # one multi-row INSERT; the unique (enrollment, step) key refuses a double
        session.execute(insert(StudentCourseProgress), [
            {"enrollment_id": enrollment.id, "step_id": step_id, "status": ProgressStatus.UNBOOKED, "skipped_ahead": False,
             "created_at": now, "updated_at": now} for step_id in missing])
        done.progress_created.extend(missing)
        if enrollment.status == EnrollmentStatus.COMPLETED:  # a step added later reopens a finished course
            ENROLLMENT.move(enrollment, EnrollmentStatus.ACTIVE, session=session, cause=cause or "step added",
                            enrollment_id=enrollment.id)
        # a course completed before (suspended or revoked since, perhaps) is open again: its next completion is new
        enrollment.completed_at = None
    granted = set() if fresh else set(session.scalars(
        select(CreditLedgerEntry.credit_type).where(
            CreditLedgerEntry.enrollment_id == enrollment.id,
            CreditLedgerEntry.entry_type == LedgerEntryType.GRANT,
            CreditLedgerEntry.cause == str(bundle_cause(enrollment.id)),
        )
    ))
    for credit_type, quantity in sorted(bundle_owed(enrollment, program).items()):
        if quantity > 0 and credit_type not in granted:
            credits.issue_credits(session=session, student_id=enrollment.student_id, credit_type=credit_type,
                                  quantity=quantity, cause=bundle_cause(enrollment.id),
                                  enrollment_id=enrollment.id, fresh=fresh)
            done.credits_granted[credit_type.value] = quantity
    session.flush()
    return done


def created_event_data(*, enrollment_id: int, student_id: str, course_code: str, status: str,
                       steps: list[tuple[int, str, int]], bundle: dict[str, int]) -> dict[str, Any]:
    """The data of `enrollment.created`; steps as (id, label, position)."""
    return {
        "enrollment_id": enrollment_id,
        "student_id": student_id,
        "course_code": course_code,
        "status": status,
        "steps": [{"course_step_id": id_, "label": label, "position": position} for id_, label, position in steps],
        "bundle": bundle,
    }


def welcome_context(*, student_name: str | None, course_title: str, course_code: str,
                    steps: list[tuple[str, str | None]], bundle: list[dict[str, Any]]) -> dict[str, Any]:
    """The welcome mail's template context; steps as (label, title), bundle as sold (the snapshot)."""
    return {
        "student_name": student_name,
        "course_title": course_title,
        "course_code": course_code,
        "steps": [{"label": label, "title": title} for label, title in steps],
        "bundle": [{"kind": item["kind"], "quantity": item["quantity"]} for item in bundle],
    }


CREATED_DEDUPE = "enrollment.created:{}"
WELCOME_DEDUPE = "enrollment_welcome:{}"


def announce_created(*, session: Session, enrollment: StudentCourseEnrollment, program: CourseProgram,
                     fresh: bool = False, steps: list[CourseStep] | None = None) -> None:
    """`enrollment.created` for the platform and the welcome mail; each once per enrollment.

    `fresh`: the enrollment row was inserted in this transaction (no message can exist yet).
    """
    student = session.get(Student, enrollment.student_id)
    steps = live_steps(session, program.id) if steps is None else steps
    outbox.add_platform_event(
        session=session,
        type="enrollment.created",
        data=created_event_data(
            enrollment_id=enrollment.id, student_id=enrollment.student_id, course_code=program.code,
            status=enrollment.status.value, steps=[(s.id, s.label, s.position) for s in steps],
            bundle={t.value: q for t, q in bundle_owed(enrollment, program).items()}),
        dedupe_key=CREATED_DEDUPE.format(enrollment.id),
        enrollment_id=enrollment.id,
        fresh=fresh,
    )
    if student is not None and student.email:
        outbox.add_mail(
            session=session,
            template="enrollment_welcome",
            recipient=student.email,
            context=welcome_context(
                student_name=student.name, course_title=program.title, course_code=program.code,
                steps=[(s.label, s.title) for s in steps],
                bundle=sold_bundle(enrollment, program)),
            dedupe_key=WELCOME_DEDUPE.format(enrollment.id),
            enrollment_id=enrollment.id,
            fresh=fresh,
        )


# --------------------------------------------------------------------------- money moves


def _event_data(enrollment: StudentCourseEnrollment, program: CourseProgram, **extra) -> dict[str, Any]:
    return {"enrollment_id": enrollment.id, "student_id": enrollment.student_id, "course_code": program.code,
            "status": enrollment.status.value, **extra}


def revoke(*, session: Session, enrollment: StudentCourseEnrollment, cause: str, reason: str) -> bool:
    """Full refund or lost dispute: revoked, unconsumed bundle credits revoked, open steps cancelled.

    Completed steps and consumed credits stay on record; active bookings stay bookings (the platform
    is told through `enrollment.revoked`). Re-applying it changes nothing. Returns True on the move.
    """
    if enrollment.status == EnrollmentStatus.FAILED:
        return False  # never paid: nothing to take back
    now = utcnow()
    moved = ENROLLMENT.move(enrollment, EnrollmentStatus.REVOKED, session=session, cause=cause, enrollment_id=enrollment.id,
                            at=now)
    if moved:
        enrollment.revoked_at = now
    credits.revoke_unconsumed(session=session, cause=Cause.revocation(ENROLLMENT_OWNER, enrollment.id),
                              enrollment_id=enrollment.id)
    told = enrollment.activated_at is not None  # the platform never heard of one that was not activated
    for progress in session.scalars(select(StudentCourseProgress)
                                    .where(StudentCourseProgress.enrollment_id == enrollment.id)
                                    .order_by(StudentCourseProgress.id)):
        if progress.status not in OPEN_STEPS:
            continue
        if told:  # each step's move goes to the platform, as every other step move does
            progress_moves.move(session=session, progress=progress, target=ProgressStatus.CANCELLED, cause=cause,
                                at=now, enrollment=enrollment)
        else:
            PROGRESS.move(progress, ProgressStatus.CANCELLED, session=session, cause=cause,
                          enrollment_id=enrollment.id, at=now)
            progress.cancelled_at = now
    if moved and told:
        program = program_of(session, enrollment)
        active_bookings = list(session.scalars(select(Booking.id).where(
            Booking.enrollment_id == enrollment.id, Booking.status == BookingStatus.ACTIVE).order_by(Booking.id)))
        outbox.add_platform_event(
            session=session, type="enrollment.revoked",
            data=_event_data(enrollment, program, reason=reason, active_booking_ids=active_bookings),
            dedupe_key=f"enrollment.revoked:{enrollment.id}:{cause}", enrollment_id=enrollment.id,
        )
    session.flush()
    return moved


def suspend(*, session: Session, enrollment: StudentCourseEnrollment, cause: str, reason: str) -> bool:
    """An open dispute: no new step bookings; existing bookings, steps and credits kept."""
    if enrollment.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.COMPLETED):
        return False
    now = utcnow()
    ENROLLMENT.move(enrollment, EnrollmentStatus.SUSPENDED, session=session, cause=cause, enrollment_id=enrollment.id, at=now)
    enrollment.suspended_at = now
    outbox.add_platform_event(
        session=session, type="enrollment.suspended",
        data=_event_data(enrollment, program_of(session, enrollment), reason=reason),
        dedupe_key=f"enrollment.suspended:{enrollment.id}:{cause}", enrollment_id=enrollment.id,
    )
    return True


def reinstate(*, session: Session, enrollment: StudentCourseEnrollment, cause: str, reason: str) -> bool:
    """Every dispute closed in our favour: back to active (a documented extra event tells the platform)."""
    if enrollment.status != EnrollmentStatus.SUSPENDED:
        return False
    now = utcnow()
    ENROLLMENT.move(enrollment, EnrollmentStatus.ACTIVE, session=session, cause=cause, enrollment_id=enrollment.id, at=now)
    enrollment.suspended_at = None
    complete_if_done(session=session, enrollment_id=enrollment.id, at=now, cause=cause)  # finished while suspended
    outbox.add_platform_event(
        session=session, type="enrollment.reinstated",
        data=_event_data(enrollment, program_of(session, enrollment), reason=reason),
        dedupe_key=f"enrollment.reinstated:{enrollment.id}:{cause}", enrollment_id=enrollment.id,
    )
    return True


# --------------------------------------------------------------------------- re-fulfilment


def complete_if_done(*, session: Session, enrollment_id: int, at: datetime, cause: str) -> bool:
    """Every live step completed → the enrollment is completed. Returns True on the move."""
    enrollment = session.get(StudentCourseEnrollment, enrollment_id)
    if enrollment is None or enrollment.status != EnrollmentStatus.ACTIVE:
        return False
    statuses = list(session.scalars(
        select(StudentCourseProgress.status)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .where(StudentCourseProgress.enrollment_id == enrollment_id, CourseStep.deleted_at.is_(None))
    ))
    if not statuses or any(s != ProgressStatus.COMPLETED for s in statuses):
        return False
    ENROLLMENT.move(enrollment, EnrollmentStatus.COMPLETED, session=session, cause=cause, enrollment_id=enrollment.id, at=at)
    if enrollment.completed_at is not None:
        # completed before a suspension or a revocation, and given back: the same completion, already told (the
        # reinstatement's event carries the status); reopening a step clears `completed_at`
        return True
    enrollment.completed_at = at
    program = session.get(CourseProgram, enrollment.program_id)
    outbox.add_platform_event(
        session=session, type="enrollment.completed",
        data={"enrollment_id": enrollment.id, "student_id": enrollment.student_id,
              "course_code": program.code if program else None, "status": EnrollmentStatus.COMPLETED.value,
              "completed_steps": len(statuses), "completed_at": at.isoformat()},
        dedupe_key=f"enrollment.completed:{enrollment.id}:{cause}", enrollment_id=enrollment.id,
    )
    return True


# --------------------------------------------------------------------------- read side


def _remaining_by_type(session: Session, enrollment_id: int) -> dict[str, int]:
    now = utcnow()
    totals = {t.value: 0 for t in CreditType}
    for lot in credits.lots(session=session, enrollment_id=enrollment_id):
        if lot.remaining > 0 and (lot.grant.expires_at is None or lot.grant.expires_at > now):
            totals[lot.grant.credit_type.value] += lot.remaining
    return totals


def enrollment_view(session: Session, enrollment: StudentCourseEnrollment) -> dict[str, Any]:
    """One enrollment in the read API's shape (`GET /v1/students/<id>/courses`). A step added to the course after
    a completed enrollment finished it has no progress row (it is not owed until booked), but it can be booked:
    it is listed `unbooked`, and is the next step."""
    program = program_of(session, enrollment)
    progress_of = and_(StudentCourseProgress.step_id == CourseStep.id,
                       StudentCourseProgress.enrollment_id == enrollment.id)
    rows = [(progress, step) for step, progress in session.execute(
        select(CourseStep, StudentCourseProgress)
        .outerjoin(StudentCourseProgress, progress_of)
        .where(CourseStep.program_id == enrollment.program_id, CourseStep.deleted_at.is_(None))
        .order_by(CourseStep.position, CourseStep.id)
    ).all() if progress is not None or enrollment.status == EnrollmentStatus.COMPLETED]
    booking_ids = [p.booking_id for p, _ in rows if p is not None and p.booking_id]
    booking_classes = {row.id: row.class_id for row in session.execute(
        select(Booking.id, Booking.class_id).where(Booking.id.in_(booking_ids)))} if booking_ids else {}
    steps = []
    next_step = None
    for progress, step in rows:
        status = progress.status if progress is not None else ProgressStatus.UNBOOKED
        steps.append({
            "course_step_id": step.id,
            "label": step.label,
            "position": step.position,
            "title": step.title,
            "status": status.value,
            "booking_id": progress.booking_id if progress is not None else None,
            "class_id": (progress.group_class_id or booking_classes.get(progress.booking_id)) if progress else None,
            "skipped_ahead": bool(progress.skipped_ahead) if progress is not None else False,
        })
        # a deleted course's steps cannot be booked (its progress stays on record): no next step to offer
        if next_step is None and program.deleted_at is None and status in (ProgressStatus.UNBOOKED,
                                                                            ProgressStatus.MISSED):
            next_step = {"course_step_id": step.id, "label": step.label}
    return {
        "id": enrollment.id,
        "course_code": program.code,
        "course_title": program.title,
        "status": enrollment.status.value,
        "purchased_at": enrollment.created_at.isoformat() if enrollment.created_at else None,
        "steps": steps,
        "next_step": next_step,
        "completed_steps": sum(1 for s in steps if s["status"] == ProgressStatus.COMPLETED.value),
        "total_steps": len(steps),
        "credits": _remaining_by_type(session, enrollment.id),
    }


def student_courses(*, session: Session, student_id: str) -> dict[str, Any]:
    enrollments = session.scalars(select(StudentCourseEnrollment)
                                  .where(StudentCourseEnrollment.student_id == student_id)
                                  .order_by(StudentCourseEnrollment.id))
    return {"student_id": student_id, "enrollments": [enrollment_view(session, e) for e in enrollments]}
