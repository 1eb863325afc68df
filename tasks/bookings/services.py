"""The booking lifecycle from platform events: the step guard, progress, cancellations, attendance, credits.

`step_guard` is THE rule for course-step bookings. The eligibility endpoint asks it (read only) and
`record_booking` asks it (under the enrollment's row lock) — one function, so the answer the
platform gets before booking is the answer the event path applies after.

Order of the checks, first failing one wins (its name is the `reason`):
    unknown_course_step → no_active_enrollment / enrollment_suspended → not_a_step_option →
    class_cancelled → step_already_completed → step_already_booked

Out-of-order delivery (see docs/bookings.md):
- a cancel or an attendance before its booking parks (`WaitFor("booking:<id>")`) and is applied
  when the booking arrives;
- a booking for a step still held by an *older* booking waits a while (`HOLD_WINDOW`) for that
  booking's cancel / attendance, which may be in flight; after the window it is refused, unless that cancel
  or attendance is already received and waits to be applied (the workers fell behind);
- so does a credit booking that finds no credit left while an older credit booking of the student stands
  (its within-policy cancel, in flight, may give the credit back);
- a booking older than one already accepted for the same step is history overtaken: it is recorded
  detached from the enrollment (no progress effect), so its own cancel / attendance still apply;
- all three hold for a booking made before a refund we processed first: it is then left on the step
  the revocation cancelled, as the revocation would have left it.
Nothing here commits; the runner owns the transaction.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import Exists, func, literal, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, contains_eager

from db.enums import BookingStatus, CreditType, EnrollmentStatus, InboxStatus, ProgressStatus
from db.models import (
    Booking,
    CourseProgram,
    CourseStep,
    CourseStepOption,
    GroupClass,
    InboxEvent,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
    TransitionLog,
)
from tasks.ledger import credits
from tasks.messaging import outbox
from tasks.enrollments import progress as progress_moves
from tasks.enrollments.services import complete_if_done
from tasks.errors import WaitFor
from tasks.events import AttendanceMarked, BookingCancelled, BookingCreated, platform_subject
from tasks.inbox.context import lock_key
from tasks.machines import PROGRESS, BOOKING, ENROLLMENT
from tasks.bookings import mirrors
from tasks.bookings.mirrors import ensure_student

log = logging.getLogger("coursepipe.bookings")


# reasons of `booking.rejected` (docs/platform.md; tasks/outbound_events.RejectionReason lists them)
UNKNOWN_COURSE_STEP = "unknown_course_step"
NO_ACTIVE_ENROLLMENT = "no_active_enrollment"
ENROLLMENT_SUSPENDED = "enrollment_suspended"
NOT_A_STEP_OPTION = "not_a_step_option"
CLASS_CANCELLED = "class_cancelled"
STEP_ALREADY_COMPLETED = "step_already_completed"
STEP_ALREADY_BOOKED = "step_already_booked"
STEP_CANCELLED = "step_cancelled"  # the step was deactivated (revocation) on an otherwise active enrollment
NO_CREDIT = "no_credit"

# enrollments whose steps can be booked; COMPLETED reopens if a new step is booked
BOOKABLE_ENROLLMENT = (EnrollmentStatus.ACTIVE, EnrollmentStatus.COMPLETED)
BOOKABLE_PROGRESS = (ProgressStatus.UNBOOKED, ProgressStatus.MISSED)

# how long a newer booking waits for the cancel/attendance of the older booking holding its step
HOLD_WINDOW = timedelta(minutes=10)


class Addressee(NamedTuple):
    """What a booking mail needs of its student, read as the student's row is held (`hold_student`)."""
    email: str | None
    name: str | None
    timezone: str | None


def booking_key(booking_id: str) -> str:
    """What a cancel / attendance that arrived before its booking waits for."""
    return f"booking:{booking_id}"


def booking_ended_key(booking_id: str) -> str:
    """What a newer booking waits for while an older booking holds its step."""
    return f"booking-ended:{booking_id}"


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Verdict:
    eligible: bool
    reason: str | None
    step: CourseStep | None = None
    enrollment: StudentCourseEnrollment | None = None
    progress: StudentCourseProgress | None = None
    holder: Booking | None = None  # the active booking holding the step, when that is the reason
    group_class: GroupClass | None = None  # the class asked about, when it is a step option and mirrored
    # the enrollment's bookings of the step that were not rejected, when the guard read them (it does
    # unless the step is completed or cancelled): the holder is among them
    step_bookings: tuple[Booking, ...] | None = None

    def as_dict(self) -> dict:
        return {"eligible": self.eligible, "reason": self.reason}


def _live_step(session: Session, course_step_id: int) -> CourseStep | None:
    """The step, with its course loaded in the same statement (`step.program`), if neither is deleted."""
    return session.scalar(
        select(CourseStep)
        .join(CourseStep.program)
        .options(contains_eager(CourseStep.program))
        .where(CourseStep.id == course_step_id, CourseStep.deleted_at.is_(None), CourseProgram.deleted_at.is_(None))
    )


def _progress_of(session: Session, enrollment_id: int, step_id: int, *, lock: bool) -> StudentCourseProgress | None:
    query = select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == enrollment_id,
                                                StudentCourseProgress.step_id == step_id)
    if lock:
        query = query.with_for_update()
    return session.scalar(query)


def _holder(session: Session, enrollment_id: int, step_id: int) -> Booking | None:
    return _active(_step_bookings(session, enrollment_id, step_id))


def _active(step_bookings: tuple[Booking, ...]) -> Booking | None:
    """The booking holding the step, among its bookings (at most one is active)."""
    return next((b for b in step_bookings if b.status == BookingStatus.ACTIVE), None)


def _step_bookings(session: Session, enrollment_id: int, step_id: int) -> tuple[Booking, ...]:
    """The enrollment's bookings of the step that were not rejected: the active one holding it (at most
    one, `uq_booking_active_step`) and those that ended. One read serves the guard and the history check."""
    return tuple(session.scalars(select(Booking).where(Booking.enrollment_id == enrollment_id,
                                                       Booking.course_step_id == step_id,
                                                       Booking.status != BookingStatus.REJECTED)))


def _bookable_at(enrollment: StudentCourseEnrollment, as_of: datetime | None) -> bool:
    """Could the enrollment be booked at `as_of`? Now, or — for a booking delivered late — back then:
    a suspension or revocation we applied after the booking happened does not refuse it."""
    if enrollment.status in BOOKABLE_ENROLLMENT:
        return True
    if as_of is None or (enrollment.activated_at is not None and enrollment.activated_at > as_of):
        return False
    if enrollment.status == EnrollmentStatus.SUSPENDED:
        return enrollment.suspended_at is not None and enrollment.suspended_at > as_of
    if enrollment.status == EnrollmentStatus.REVOKED:
        return enrollment.activated_at is not None and enrollment.revoked_at is not None \
            and enrollment.revoked_at > as_of
    return False


def step_guard(
    *, session: Session, student_id: str, course_step_id: int, class_id: str | None = None, lock: bool = False,
    as_of: datetime | None = None,
) -> Verdict:
    """May this student book this step (in this class, when given)? The one rule for both paths.

    With `lock`, the student's enrollments in the course are locked (FOR UPDATE on PostgreSQL) so
    two bookings of one enrollment are decided one after the other; the partial unique index
    `uq_booking_active_step` stays the last word. `as_of` (the event path: the booking's time)
    judges the enrollment's status as it was then, so a suspension or revocation processed after
    the booking happened does not refuse it.
    """
    step = _live_step(session, course_step_id)
    if step is None:
        return Verdict(False, UNKNOWN_COURSE_STEP)
    if lock and class_id is not None:
        _class_for_booking(session, class_id)  # first, as a cancellation of the class takes it first
    query = (select(StudentCourseEnrollment)
             .where(StudentCourseEnrollment.student_id == student_id,
                    StudentCourseEnrollment.program_id == step.program_id)
             .order_by(StudentCourseEnrollment.id))
    if lock:
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE: see credits.lock_student
    enrollments = list(session.scalars(query))
    bookable = [e for e in enrollments if _bookable_at(e, as_of)]
    if as_of is not None:
        # a booking delivered late is decided on the enrollments there when it was made: one bought after it (the
        # course bought again after a refund) only when there was none (else clocks out of step)
        bookable = [e for e in bookable if e.activated_at is None or e.activated_at <= as_of] or bookable
    if not bookable:
        if any(e.status == EnrollmentStatus.SUSPENDED for e in enrollments):
            return Verdict(False, ENROLLMENT_SUSPENDED, step, next(e for e in enrollments if e.status == EnrollmentStatus.SUSPENDED))
        return Verdict(False, NO_ACTIVE_ENROLLMENT, step)
    # a student who bought the course twice books on the first enrollment where the step is open
    rows = [(e, _progress_of(session, e.id, step.id, lock=lock)) for e in bookable]
    enrollment, progress = next(((e, p) for e, p in rows if p is None or p.status in BOOKABLE_PROGRESS), rows[0])
    group_class = None
    if class_id is not None:
        # the option and the class's mirror (absent until its `class.upserted`) in one statement
        option = session.execute(
            select(CourseStepOption.id, GroupClass)
            .outerjoin(GroupClass, GroupClass.id == CourseStepOption.group_class_id)
            .where(CourseStepOption.step_id == step.id, CourseStepOption.group_class_id == class_id,
                   CourseStepOption.deleted_at.is_(None))
        ).first()
        if option is None:
            return Verdict(False, NOT_A_STEP_OPTION, step, enrollment, progress)
        group_class = option[1]
        if group_class is not None and mirrors.cancelled_for(group_class, as_of):
            return Verdict(False, CLASS_CANCELLED, step, enrollment, progress, group_class=group_class)
    status = progress.status if progress is not None else ProgressStatus.UNBOOKED
    if status == ProgressStatus.COMPLETED:
        return Verdict(False, STEP_ALREADY_COMPLETED, step, enrollment, progress, group_class=group_class)
    if status == ProgressStatus.CANCELLED:
        return Verdict(False, STEP_CANCELLED, step, enrollment, progress, group_class=group_class)
    step_bookings = _step_bookings(session, enrollment.id, step.id)
    holder = _active(step_bookings)
    if status == ProgressStatus.BOOKED or holder is not None:
        return Verdict(False, STEP_ALREADY_BOOKED, step, enrollment, progress, holder, group_class, step_bookings)
    return Verdict(True, None, step, enrollment, progress, group_class=group_class, step_bookings=step_bookings)


# --------------------------------------------------------------------------- booking.created


def _insert(session: Session, booking: Booking) -> bool:
    """Insert in a savepoint. False when a constraint refused it (the same booking id, or the step taken)."""
    try:
        with session.begin_nested():
            session.add(booking)
            session.flush()
    except IntegrityError:
        return False
    BOOKING.begin(booking, session=session, cause=f"booking.created:{booking.id}",
                  enrollment_id=booking.enrollment_id, at=booking.booked_at)
    return True


def _class_for_booking(session: Session, class_id: str) -> GroupClass | None:
    """The class's mirror, read under a shared lock (PostgreSQL) for a booking into it: a cancellation of the
    class committed first is seen here; one that comes after waits for this booking, then finds it among the
    class's bookings. Without it the two could miss each other, leaving a booking in a cancelled class.

    A class not mirrored yet has no row to lock: its first `class.upserted` (a cancellation, the scheduled one late
    or lost) inserts it under its subject's advisory lock, which is taken here instead, and the row read again."""
    query = (select(GroupClass).where(GroupClass.id == class_id).with_for_update(read=True)
             .execution_options(populate_existing=True))
    found = session.scalars(query).first()
    if found is None and session.get_bind().dialect.name == "postgresql":
        subject = platform_subject("class.upserted", {"class_id": class_id})
        session.execute(select(func.pg_advisory_xact_lock(lock_key(subject))))
        found = session.scalars(query).first()
    return found


def _class_cancelled(session: Session, class_id: str, at: datetime, *, lock: bool) -> GroupClass | None:
    """The class when it is cancelled for a booking made at `at` (see `mirrors.cancelled_for`), else None."""
    group_class = _class_for_booking(session, class_id) if lock else session.get(GroupClass, class_id)
    return group_class if group_class is not None and mirrors.cancelled_for(group_class, at) else None


def record_booking(*, session: Session, data: BookingCreated, at: datetime, may_wait: bool = False,
                   lock: bool = True) -> Booking:
    """Apply a `booking.created` that occurred at `at`. Re-applying the same booking id changes nothing.

    `may_wait`: the event is young enough to wait for an older booking's end (see `HOLD_WINDOW`).
    `lock=False` skips the enrollment row lock (tests use it to show the unique index holds alone).
    """
    existing = session.get(Booking, data.booking_id)
    if existing is not None:
        return existing
    student = hold_student(session, data.student_id)  # before the enrollment, as an erasure takes them
    if student is None:
        ensure_student(session=session, student_id=data.student_id)  # first seen: a stub, created and held
        student = hold_student(session, data.student_id)
    if data.course_step_id is not None:  # a course-step booking never consumes a credit
        return _book_step(session, data, at, student, may_wait=may_wait, lock=lock)
    if _class_cancelled(session, data.class_id, at, lock=lock):
        return _reject(session, data, CLASS_CANCELLED, at, student)
    if data.credit_type is not None:
        return _book_with_credit(session, data, at, student, may_wait=may_wait)
    # a plain booking (paid on the platform): recorded so its cancel / attendance have something to apply to
    booking = Booking(id=data.booking_id, student_id=data.student_id, class_id=data.class_id, status=BookingStatus.ACTIVE,
                      booked_at=at)
    return booking if _insert(session, booking) else _existing_or_fail(session, data)


def _existing_or_fail(session: Session, data: BookingCreated) -> Booking:
    existing = session.get(Booking, data.booking_id)
    if existing is None:  # pragma: no cover - only a broken constraint gets here
        raise RuntimeError(f"booking {data.booking_id} was refused by a constraint but does not exist")
    return existing


def _overtaken(session: Session, enrollment: StudentCourseEnrollment, step: CourseStep, at: datetime,
               step_bookings: tuple[Booking, ...] | None = None) -> bool:
    """Is an accepted booking of this step newer than `at`? Then this booking's whole life came before it.
    `step_bookings`: the enrollment's bookings of the step that were not rejected, when already read."""
    if step_bookings is not None:
        return any(b.booked_at is not None and b.booked_at > at for b in step_bookings)
    return session.scalar(
        select(Booking.id).where(Booking.enrollment_id == enrollment.id, Booking.course_step_id == step.id,
                                 Booking.status != BookingStatus.REJECTED, Booking.booked_at > at).limit(1)
    ) is not None


def _book_step(session: Session, data: BookingCreated, at: datetime, student: Addressee, *, may_wait: bool,
               lock: bool) -> Booking:
    verdict = step_guard(session=session, student_id=data.student_id, course_step_id=data.course_step_id,
                         class_id=data.class_id, lock=lock, as_of=at)
    step, enrollment = verdict.step, verdict.enrollment
    # booked before the refund we processed first (`as_of` let it through): decided as on the active step
    # it was then, and left on the (now cancelled) step as the revocation would have left it
    revoked_step = verdict.reason == STEP_CANCELLED and enrollment.status == EnrollmentStatus.REVOKED
    maybe_history = verdict.eligible or revoked_step or verdict.reason in (STEP_ALREADY_BOOKED,
                                                                           STEP_ALREADY_COMPLETED)
    if maybe_history and enrollment is not None and _overtaken(session, enrollment, step, at, verdict.step_bookings):
        # history overtaken (delivered late): kept for the record, detached from the enrollment's progress
        booking = Booking(id=data.booking_id, student_id=data.student_id, class_id=data.class_id,
                          course_step_id=step.id, status=BookingStatus.ACTIVE, booked_at=at)
        log.info("booking %s on %s is older than an accepted booking of the step: recorded detached",
                 data.booking_id, step.label)
        return booking if _insert(session, booking) else _existing_or_fail(session, data)
    holder = verdict.holder if not revoked_step else _holder(session, enrollment.id, step.id)
    if revoked_step and holder is None:
        return _attach_to_revoked(session, data, at, enrollment, step, verdict.progress)
    if not verdict.eligible:
        reason = STEP_ALREADY_BOOKED if revoked_step else verdict.reason
        if reason == STEP_ALREADY_BOOKED and holder is not None and holder.booked_at is not None \
                and holder.booked_at < at and (may_wait or _end_received(session, holder.id)):
            # the platform books a step only after its previous booking ended: that end may be in flight
            raise WaitFor(booking_ended_key(holder.id),
                          f"step {step.label} is held by the older booking {holder.id}; waiting for its end")
        return _reject(session, data, reason, at, student, enrollment=enrollment, step=step)

    # read before anything is written: the writes below then go out together, the progress row in one UPDATE
    skipped_ahead = _earlier_step_unbooked(session, enrollment, step)
    booking = Booking(id=data.booking_id, student_id=data.student_id, class_id=data.class_id,
                      course_step_id=step.id, enrollment_id=enrollment.id, status=BookingStatus.ACTIVE, booked_at=at)
    if not _insert(session, booking):
        existing = session.get(Booking, data.booking_id)
        if existing is not None:
            return existing  # a concurrent twin of this very booking
        # uq_booking_active_step: another booking of this step won a race the guard could not see
        return _reject(session, data, STEP_ALREADY_BOOKED, at, student, enrollment=enrollment, step=step)

    progress = verdict.progress
    if progress is None:  # a step added to the course after the purchase
        progress = StudentCourseProgress(enrollment_id=enrollment.id, step_id=step.id, status=ProgressStatus.UNBOOKED)
        session.add(progress)
        session.flush()
    if enrollment.status == EnrollmentStatus.COMPLETED:
        ENROLLMENT.move(enrollment, EnrollmentStatus.ACTIVE, session=session, cause=f"booking.created:{booking.id}",
                        enrollment_id=enrollment.id, at=at)
        enrollment.completed_at = None
    progress.booking_id = booking.id
    progress.group_class_id = data.class_id
    progress.skipped_ahead = skipped_ahead
    # the booking row is new in this transaction, so nothing keyed by it can exist yet (`fresh`)
    progress_moves.move(session=session, progress=progress, target=ProgressStatus.BOOKED, cause=f"booking.created:{booking.id}",
                        at=at, enrollment=enrollment, step=step, fresh=True)
    _mail(session, "booking_confirmed", booking, student, enrollment=enrollment, step=step,
          group_class=verdict.group_class, fresh=True)
    return booking


def _attach_to_revoked(session: Session, data: BookingCreated, at: datetime, enrollment: StudentCourseEnrollment,
                       step: CourseStep, progress: StudentCourseProgress) -> Booking:
    booking = Booking(id=data.booking_id, student_id=data.student_id, class_id=data.class_id,
                      course_step_id=step.id, enrollment_id=enrollment.id, status=BookingStatus.ACTIVE, booked_at=at)
    if not _insert(session, booking):
        return _existing_or_fail(session, data)
    # the step names this booking now, as a rebooking of a missed step would have before the revocation
    progress.booking_id, progress.group_class_id = booking.id, data.class_id
    log.info("booking %s predates the revocation of enrollment %s: recorded on the cancelled step", booking.id,
             enrollment.id)
    return booking


ENDING_TYPES = ("booking.cancelled", "attendance.marked")  # the platform events that end a booking
UNAPPLIED = (InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING)


def _end_stored(subject) -> Exists:
    """A cancel or attendance about `subject` (a booking's key, or an SQL expression of one) is stored and not
    applied yet: a wait for it is no longer a guess, however long the events have queued (past HOLD_WINDOW
    when the workers fell behind)."""
    return select(InboxEvent.id).where(InboxEvent.subject == subject, InboxEvent.type.in_(ENDING_TYPES),
                                       InboxEvent.status.in_(UNAPPLIED)).exists()


def _end_received(session: Session, booking_id: str) -> bool:
    return bool(session.scalar(select(_end_stored(booking_key(booking_id)))))


def _older_credit_booking(session: Session, data: BookingCreated, at: datetime, *, may_wait: bool) -> Booking | None:
    """The older booking whose end a credit booking finding no credit waits for: within HOLD_WINDOW the
    student's newest active booking that spent a credit of this type before `at`; past it, the newest such
    booking whose cancel or attendance is received and not applied yet (None: nothing to wait for)."""
    older = select(Booking).where(
        Booking.student_id == data.student_id, Booking.credit_type == CreditType(data.credit_type),
        Booking.status == BookingStatus.ACTIVE, Booking.booked_at < at).order_by(Booking.booked_at.desc())
    if may_wait:
        return session.scalar(older.limit(1))
    return session.scalar(older.where(_end_stored(literal(booking_key("")).concat(Booking.id))).limit(1))


def _earlier_step_unbooked(session: Session, enrollment: StudentCourseEnrollment, step: CourseStep) -> bool:
    return session.scalar(
        select(StudentCourseProgress.id)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .where(StudentCourseProgress.enrollment_id == enrollment.id, CourseStep.deleted_at.is_(None),
               CourseStep.position < step.position, StudentCourseProgress.status == ProgressStatus.UNBOOKED)
        .limit(1)
    ) is not None


def _book_with_credit(session: Session, data: BookingCreated, at: datetime, student: Addressee, *,
                      may_wait: bool) -> Booking:
    try:
        credits.consume_credit(session=session, student_id=data.student_id,
                               credit_type=CreditType(data.credit_type), booking_id=data.booking_id, now=at)
    except credits.NoCredit:
        spender = _older_credit_booking(session, data, at, may_wait=may_wait)
        if spender is not None:
            # the platform books with a credit only while one is free: an older booking's cancel, which gave
            # its credit back, may be in flight
            raise WaitFor(booking_ended_key(spender.id), f"no {data.credit_type} credit left; waiting for the "
                                                         f"end of the older credit booking {spender.id}") from None
        return _reject(session, data, NO_CREDIT, at, student)
    booking = Booking(id=data.booking_id, student_id=data.student_id, class_id=data.class_id,
                      credit_type=CreditType(data.credit_type), status=BookingStatus.ACTIVE, booked_at=at)
    return booking if _insert(session, booking) else _existing_or_fail(session, data)


def _reject(session: Session, data: BookingCreated, reason: str, at: datetime, student: Addressee, *,
            enrollment: StudentCourseEnrollment | None = None, step: CourseStep | None = None) -> Booking:
    """Refused: nothing else changes; the booking is kept as `rejected` and the platform is told."""
    booking = Booking(id=data.booking_id, student_id=data.student_id, class_id=data.class_id,
                      course_step_id=step.id if step is not None else None,
                      enrollment_id=enrollment.id if enrollment is not None else None,
                      credit_type=CreditType(data.credit_type) if data.credit_type else None,
                      status=BookingStatus.REJECTED, rejection_reason=reason, booked_at=at)
    if not _insert(session, booking):
        return _existing_or_fail(session, data)
    outbox.add_platform_event(session=session, type="booking.rejected",
                              data={"booking_id": data.booking_id, "reason": reason,
                                    "enrollment_id": enrollment.id if enrollment is not None else None},
                              dedupe_key=f"booking.rejected:{data.booking_id}",
                              enrollment_id=enrollment.id if enrollment is not None else None)
    log.info("booking %s rejected: %s", data.booking_id, reason)
    if reason == CLASS_CANCELLED:  # the class was cancelled before we heard of the booking: tell the student too
        _mail(session, "class_cancelled", booking, student, enrollment=enrollment, step=step)
    return booking


# --------------------------------------------------------------------------- cancellation and attendance


_ADDRESSEE = (Student.email, Student.name, Student.timezone)


def hold_student(session: Session, student_id: str) -> Addressee | None:
    """The student's row under a key-share lock (PostgreSQL), before the enrollment and progress rows a booking's
    change locks; what its mails need of it (None: no such student).

    An erasure takes the student for update and then clears the e-mail on their enrollments: taken in that order
    here too, one waits for the other, where a booking holding the enrollment and asking for the student (its
    mail's address) made PostgreSQL end one of the two. Read under the lock, the address is the erasure's to
    clear: either the erasure waits for this transaction, and then finds its mail, or it has committed, and then
    there is no address (read without it, an address could be written after the erasure had looked for the
    student's mails). The lock does not conflict with the ledger's (`credits.lock_student`)."""
    row = session.execute(select(*_ADDRESSEE).where(Student.id == student_id)
                          .with_for_update(read=True, key_share=True)).first()
    return Addressee(*row) if row is not None else None


def hold_students_of_class(session: Session, class_id: str) -> dict[str, Addressee]:
    """`hold_student` for every student with an active booking in the class, in id order, in one statement: a
    class's cancellation takes them before the reminders listing the class (which an erasure of one of those
    students also wants, holding the student)."""
    rows = session.execute(select(Student.id, *_ADDRESSEE)
                           .where(Student.id.in_(select(Booking.student_id).where(
                               Booking.class_id == class_id, Booking.status == BookingStatus.ACTIVE)))
                           .order_by(Student.id).with_for_update(read=True, key_share=True))
    return {student_id: Addressee(*rest) for student_id, *rest in rows}


def _locked_booking(session: Session, booking_id: str, *, mailing: bool = False,
                    ending: Callable[[list[str]], None] | None = None,
                    ) -> tuple[Booking, Addressee | None, StudentCourseEnrollment | None]:
    """The booking and its enrollment (None for a booking without one), both locked; `mailing`: the change may
    mail the student, whose row is then held between the two (`hold_student`; else None). `ending` is told the
    booking's id once its row is locked, before the student's and the enrollment's: a newer booking of the step
    (or a credit booking) waiting for this one's end holds that key's lock and then wants them, so they come
    after it here too (the other order let PostgreSQL end one of the two as a deadlock)."""
    booking = session.scalar(select(Booking).where(Booking.id == booking_id).with_for_update())
    if booking is None:
        raise WaitFor(booking_key(booking_id), f"booking {booking_id} has not arrived yet")
    if ending is not None:
        ending([booking.id])
    student = hold_student(session, booking.student_id) if mailing else None
    enrollment = None
    if booking.enrollment_id is not None:  # serialize with other moves of the same enrollment
        enrollment = session.scalar(select(StudentCourseEnrollment)
                                    .where(StudentCourseEnrollment.id == booking.enrollment_id)
                                    .with_for_update(key_share=True))
    return booking, student, enrollment


def _attached_progress(session: Session, booking: Booking) -> tuple[StudentCourseProgress | None, CourseStep | None]:
    """The progress row this booking holds, locked, and its step with the course loaded (`step.program`), in
    one statement; (None, None) for credit/plain/detached bookings, or once the booking released the step."""
    if booking.enrollment_id is None or booking.course_step_id is None:
        return None, None
    found = session.execute(
        select(StudentCourseProgress, CourseStep)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .join(CourseStep.program)
        .options(contains_eager(CourseStep.program))
        .where(StudentCourseProgress.enrollment_id == booking.enrollment_id,
               StudentCourseProgress.step_id == booking.course_step_id)
        .with_for_update(of=StudentCourseProgress)
        .execution_options(populate_existing=True)  # as the lock found it, whatever this session read before
    ).first()
    if found is None or found[0].booking_id != booking.id:
        return None, None
    return found[0], found[1]


def cancel_booking(*, session: Session, data: BookingCancelled,
                   ending: Callable[[list[str]], None] | None = None) -> Booking:
    """Apply a `booking.cancelled`. Within policy the step reopens / the credit returns; outside, the
    step is missed / the credit stays spent. Before its booking: parks. Twice: a no-op. `ending` is told the
    booking's id once its row is locked, before the student's and the enrollment's (`_locked_booking`)."""
    booking, student, enrollment = _locked_booking(session, data.booking_id, mailing=True, ending=ending)
    if booking.status == BookingStatus.REJECTED:
        return booking  # never stood: nothing to undo
    progress, step = _attached_progress(session, booking)  # read before the writes, which then go out together
    cause = f"booking.cancelled:{booking.id}"
    if booking.status == BookingStatus.CANCELLED and _cancelled_later_by_its_class(session, booking, data):
        _cancelled_before_its_class(session, booking, data, enrollment, cause)
        return booking
    if not BOOKING.move(booking, BookingStatus.CANCELLED, session=session, cause=cause, enrollment_id=booking.enrollment_id,
                        at=data.cancelled_at):
        return booking
    # the booking ends in this transaction for the first time (its end is final), so what its end
    # causes is new here too: the messages keyed by it cannot exist yet (`fresh`)
    booking.cancelled_at = data.cancelled_at
    booking.within_policy = data.within_policy
    if progress is not None and progress.status == ProgressStatus.BOOKED:
        if data.within_policy:
            _reopen(session, progress, cause, data.cancelled_at, enrollment=enrollment, step=step, fresh=True)
        else:
            progress_moves.move(session=session, progress=progress, target=ProgressStatus.MISSED, cause=cause,
                                at=data.cancelled_at, enrollment=enrollment, step=step, fresh=True)
        _mail(session, "booking_cancelled", booking, student, enrollment=enrollment, step=step, progress=progress,
              fresh=True, within_policy=data.within_policy)
    elif progress is not None and progress.status == ProgressStatus.CANCELLED and data.within_policy:
        # revoked meanwhile: the step stays cancelled, but (as in order) no longer names this booking
        progress.booking_id = progress.group_class_id = None
    elif booking.credit_type is not None and data.within_policy:
        credits.release_credit(session=session, booking_id=booking.id)
    return booking


def _cancelled_later_by_its_class(session: Session, booking: Booking, data: BookingCancelled) -> bool:
    """Was this booking, cancelled here by its class's cancellation, cancelled by the student outside policy
    before that (`data`, delivered late)? Then the class's cancellation found it standing only because this
    cancel had not arrived yet."""
    if data.within_policy or booking.cancelled_at is None or data.cancelled_at >= booking.cancelled_at:
        return False
    by = session.scalar(select(TransitionLog.cause).where(
        TransitionLog.entity == BOOKING.entity, TransitionLog.entity_id == booking.id,
        TransitionLog.to_status == BookingStatus.CANCELLED.value).limit(1))
    return by == f"class_cancelled:{booking.class_id}"


def _cancelled_before_its_class(session: Session, booking: Booking, data: BookingCancelled,
                                enrollment: StudentCourseEnrollment | None, cause: str) -> None:
    """The student's cancel outside policy came first: end as in order. The booking was cancelled then, outside
    policy; its credit stays spent (the class's cancellation gave it back: it is spent again, while the lot
    holds it); its step is missed, unless the class's cancellation left it to another booking since. The class's
    mail has gone; no other is sent."""
    booking.cancelled_at, booking.within_policy = data.cancelled_at, False
    if booking.credit_type is not None:
        credits.spend_again(session=session, booking_id=booking.id, now=data.cancelled_at)
        return
    if booking.enrollment_id is None or booking.course_step_id is None:
        return
    progress = _progress_of(session, booking.enrollment_id, booking.course_step_id, lock=True)
    rebooked = any(b.id != booking.id and b.booked_at is not None and b.booked_at > booking.booked_at
                   for b in _step_bookings(session, booking.enrollment_id, booking.course_step_id))
    if progress is None or rebooked:
        return
    if progress.status == ProgressStatus.UNBOOKED:
        # the step names its booking again, as a step missed in order does
        progress.booking_id, progress.group_class_id = booking.id, booking.class_id
        progress_moves.move(session=session, progress=progress, target=ProgressStatus.MISSED, cause=cause,
                            at=data.cancelled_at, enrollment=enrollment, fresh=True)
    elif progress.status == ProgressStatus.CANCELLED and progress.booking_id is None:
        # revoked meanwhile: the step stays cancelled, naming the booking again (the class's cancellation, taken
        # within policy, had let it go), so a reinstatement reopens it missed, as in order
        progress.booking_id, progress.group_class_id = booking.id, booking.class_id


def _reopen(session: Session, progress: StudentCourseProgress, cause: str, at: datetime, **held) -> None:
    """Back to unbooked, rebookable; the booking stays in the transition log and on the booking row.
    `held`: what `progress_moves.move` may be given (the enrollment and step the caller holds, `fresh`)."""
    progress_moves.move(session=session, progress=progress, target=ProgressStatus.UNBOOKED, cause=cause, at=at, **held)
    progress.booking_id = None
    progress.group_class_id = None
    progress.skipped_ahead = False


def mark_attendance(*, session: Session, data: AttendanceMarked,
                    ending: Callable[[list[str]], None] | None = None) -> Booking:
    """Apply an `attendance.marked`: attended → step completed (maybe the course), no_show → missed. `ending`: as
    `cancel_booking`'s."""
    booking, _, enrollment = _locked_booking(session, data.booking_id, ending=ending)
    if booking.status == BookingStatus.REJECTED:
        return booking
    progress, step = _attached_progress(session, booking)  # read before the writes, which then go out together
    attended = data.outcome == "attended"
    cause = f"attendance.marked:{booking.id}"
    if not BOOKING.move(booking, BookingStatus.ATTENDED if attended else BookingStatus.NO_SHOW, session=session, cause=cause,
                        enrollment_id=booking.enrollment_id, at=data.marked_at):
        return booking
    booking.attendance_marked_at = data.marked_at
    target = ProgressStatus.COMPLETED if attended else ProgressStatus.MISSED
    # a no-show on a revoked step stays cancelled (the machine's cancelled → missed is a reinstatement's move)
    if progress is not None and PROGRESS.can(progress.status, target) \
            and not (progress.status == ProgressStatus.CANCELLED and not attended):
        # the booking's attendance is final and new in this transaction: so is its cause (`fresh`)
        progress_moves.move(session=session, progress=progress, target=target, cause=cause, at=data.marked_at,
                            enrollment=enrollment, step=step, fresh=True)
        if attended:
            complete_if_done(session=session, enrollment_id=progress.enrollment_id, at=data.marked_at, cause=cause)
    return booking


# --------------------------------------------------------------------------- a cancelled class


def cancel_class(*, session: Session, group_class: GroupClass, at: datetime, students: dict[str, Addressee],
                 ending: Callable[[list[str]], None] | None = None, made_by: datetime | None = None) -> list[str]:
    """The platform cancelled a class at `at`: its active bookings (those made by `made_by` when given: a
    cancellation a newer upsert replaced by scheduling the class again) are cancelled (within policy: steps reopen,
    credits return) and each student is mailed. Returns the cancelled booking ids; a repeat finds none.
    `ending` is told the ids once they are locked, before any student's ledger lock is (the caller's waking of
    what waits for their ends takes locks of its own, which must come first). `students`: what the caller's
    `hold_students_of_class` answered, taken before the class's reminders; this one's mails are addressed from
    it. (A booking into the class waits for the class's row, which the caller updated first, so none is missing
    from it; one that were would be held and read here.)"""
    made = () if made_by is None else (or_(Booking.booked_at.is_(None), Booking.booked_at <= made_by),)
    bookings = list(session.scalars(select(Booking).where(Booking.class_id == group_class.id,
                                                          Booking.status == BookingStatus.ACTIVE, *made)
                                    .order_by(Booking.id).with_for_update()))
    cause = f"class_cancelled:{group_class.id}"
    if ending is not None and bookings:
        ending([b.id for b in bookings])
    # their enrollments, in one order, as a cancel of one booking takes its enrollment: an admin's reinstatement or
    # revocation (holding the enrollment, reading its steps and their bookings) runs before or after this, never
    # across it (a reinstatement that read the booking standing then rebooked the step this reopens, naming none)
    enrollment_ids = sorted({b.enrollment_id for b in bookings if b.enrollment_id is not None})
    if enrollment_ids:
        session.scalars(select(StudentCourseEnrollment).where(StudentCourseEnrollment.id.in_(enrollment_ids))
                        .order_by(StudentCourseEnrollment.id).with_for_update(key_share=True)
                        .execution_options(populate_existing=True)).all()
    # the students whose credits come back, locked now, in one order: releasing them one by one in booking order
    # would lock them in an order another class's cancellation (or a revocation, holding a student and wanting a
    # progress row this one holds) could cross, and PostgreSQL would abort one of them (every booked student's row
    # is already held, key share: `hold_students_of_class`, taken by the handler before the class's reminders)
    for student_id in sorted({b.student_id for b in bookings if b.credit_type is not None}):
        credits.lock_student(session, student_id)
    for booking in bookings:
        BOOKING.move(booking, BookingStatus.CANCELLED, session=session, cause=cause, enrollment_id=booking.enrollment_id, at=at)
        booking.cancelled_at = at
        booking.within_policy = True
        progress, step = _attached_progress(session, booking)
        if progress is not None and progress.status == ProgressStatus.BOOKED:
            # named by the booking alone (unique, and cancelled once): a class id and a booking id together
            # (64 characters each) would not fit the 128 of a logged cause
            _reopen(session, progress, f"class_cancelled:booking:{booking.id}", at, step=step)
        elif progress is not None and progress.status == ProgressStatus.CANCELLED:
            # revoked meanwhile: as a within-policy cancel, the step stays cancelled but no longer names it
            progress.booking_id = progress.group_class_id = None
        if booking.credit_type is not None:
            credits.release_credit(session=session, booking_id=booking.id)
        if step is None and booking.course_step_id:  # a detached or released booking: the step is still named
            step = session.get(CourseStep, booking.course_step_id)
        enrollment = session.get(StudentCourseEnrollment, booking.enrollment_id) if booking.enrollment_id else None
        student = students.get(booking.student_id) or hold_student(session, booking.student_id)
        _mail(session, "class_cancelled", booking, student, enrollment=enrollment, step=step)
    return [b.id for b in bookings]


# --------------------------------------------------------------------------- mail


def _mail(session: Session, template: str, booking: Booking, person: Addressee | None, *,
          enrollment: StudentCourseEnrollment | None = None, step: CourseStep | None = None,
          progress: StudentCourseProgress | None = None, group_class: GroupClass | None = None, fresh: bool = False,
          **extra) -> None:
    """One mail per (template, booking) to the student, if we know their address. `person`: the booking's
    student as the caller's `hold_student` read them, the row still held (so an erasure cannot have cleared the
    address since). Rows the caller holds (the class, the enrollment) are passed in so they are not read again;
    `fresh`: the template's cause is new in this transaction (`outbox.add_message`)."""
    if person is None or not person.email:
        log.info("no address for student %s: %s mail for booking %s not sent", booking.student_id, template,
                 booking.id)
        return
    if step is None and booking.course_step_id is not None:
        step = session.get(CourseStep, booking.course_step_id)
    enrollment_id = booking.enrollment_id or (progress.enrollment_id if progress else None)
    if enrollment is None and enrollment_id is not None:
        enrollment = session.get(StudentCourseEnrollment, enrollment_id)
    program = step.program if step is not None else None  # a many-to-one: from the session when it holds it
    if group_class is None or group_class.id != booking.class_id:
        group_class = session.get(GroupClass, booking.class_id)
    context = {
        "student_name": person.name,
        "course_code": program.code if program else None,
        "step_label": step.label if step else None,
        "class_title": group_class.title if group_class else None,
        "starts_at": group_class.starts_at.isoformat() if group_class else None,
        "timezone": person.timezone or (program.timezone if program else None) or
        (group_class.timezone if group_class else None) or "UTC",
        "booking_id": booking.id,
        "class_id": booking.class_id,
        **extra,
    }
    # keyed by the booking: how the mail is found once its address is gone (`outbox.booking_mails`)
    outbox.add_mail(session=session, template=template, recipient=person.email, context=context,
                    dedupe_key=f"{template}:{booking.id}", enrollment_id=enrollment.id if enrollment else None,
                    fresh=fresh)
