"""Manual operations on enrollments, each asked for by an admin with a reason (the ingress writes the
audit entry in the same transaction and passes its cause, `admin:<audit entry id>`):

- `enroll`: an enrollment without a payment (a comp), with or without the course's bundle;
- `revoke` / `reinstate`: by hand. Reinstating a revoked enrollment reopens its cancelled steps and
  grants back what the revocation took from its bundle; it is refused while its payments say revoked
  (refunded in full or a dispute lost): refund keeping access, or enrol by hand, instead;
- refunds: `check_refund` (what may be refunded), `preview_refund` (exactly which credits, steps and
  bookings a refund would change: the real settlement run in a savepoint and rolled back), and the
  intent / outcome of the Stripe call (`workers.refunds` owns the transactions around the call).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.enums import BookingStatus, CreditType, DisputeStatus, EnrollmentStatus, LedgerEntryType, ProgressStatus
from db.models import (
    AdminRefund,
    Booking,
    CourseProgram,
    CourseStep,
    CreditLedgerEntry,
    PaymentDispute,
    PaymentRefund,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.types import utcnow
from tasks.catalog import services as catalog
from tasks.enrollments import progress as progress_moves
from tasks.enrollments import services as enrollments
from tasks.errors import NotFound, PermanentError, ValidationFailed
from tasks.ledger import credits
from tasks.ledger.causes import Cause, CauseKind
from tasks.machines import ENROLLMENT
from tasks.messaging import outbox
from tasks.purchases import fulfilment, payments, refunds

MANUAL_SESSION_PREFIX = "manual:"  # a manual enrollment's stand-in for a checkout session id


class NotAllowed(PermanentError):
    """Raised when an enrollment's state does not allow the operation (revoke a revoked one, …)."""


class NotRefundable(PermanentError):
    """Raised when an enrollment has no Stripe payment to refund, or nothing left to refund."""


def locked(session: Session, enrollment_id: int) -> StudentCourseEnrollment:
    """The enrollment, locked for this transaction (FOR UPDATE); NotFound when there is none."""
    enrollment = enrollments.get_enrollment(session, enrollment_id, lock=True)
    if enrollment is None:
        raise NotFound(f"no enrollment {enrollment_id}")
    return enrollment


# --------------------------------------------------------------------------- enrol by hand


def enroll(*, session: Session, student_id: str, course_code: str, grant_bundle: bool, cause: str,
           reason: str, actor: str) -> tuple[StudentCourseEnrollment, enrollments.Provisioned]:
    """A comp: active at once, a progress row per step, the bundle's credits when `grant_bundle`."""
    program = catalog.get_program(session, course_code)
    # the student's row (created bare if not mirrored yet, as for a purchase; `student.upserted` completes
    # it), locked: two comps for one student run one after the other, so the second sees the first's below
    fulfilment.ensure_student(session, student_id, {})
    credits.lock_student(session, student_id)
    _refuse_if_held(session, student_id, program.id, course_code)
    now = utcnow()
    enrollment = StudentCourseEnrollment(
        student_id=student_id, program_id=program.id, status=EnrollmentStatus.ACTIVE,
        stripe_checkout_session_id=f"{MANUAL_SESSION_PREFIX}{cause}", amount_total=0,
        currency=program.price_currency, activated_at=now,
        fulfilment_metadata={"manual": True, "by": actor, "reason": reason, "grant_bundle": grant_bundle,
                             "bundle": enrollments.bundle_snapshot(program, session) if grant_bundle else [],
                             "program_status_at_fulfilment": program.status.value})
    session.add(enrollment)
    session.flush()
    ENROLLMENT.begin(enrollment, session=session, cause=cause, enrollment_id=enrollment.id)
    steps = catalog.live_steps(session, program.id)
    provisioned = enrollments.provision(session=session, enrollment=enrollment, program=program, cause=cause,
                                        fresh=True, steps=steps)
    enrollments.announce_created(session=session, enrollment=enrollment, program=program, fresh=True, steps=steps)
    return enrollment, provisioned


def _refuse_if_held(session: Session, student_id: str, program_id: int, course_code: str,
                    other_than: int | None = None) -> None:
    """One enrollment in a course a student holds or is paying for: a second is refused (the caller holds the
    student's lock, so two of these for one student run one after the other)."""
    query = select(StudentCourseEnrollment.id).where(
        StudentCourseEnrollment.student_id == student_id, StudentCourseEnrollment.program_id == program_id,
        StudentCourseEnrollment.status.in_((*enrollments.ENTITLED, EnrollmentStatus.PENDING)))
    if other_than is not None:
        query = query.where(StudentCourseEnrollment.id != other_than)
    held = session.scalar(query.limit(1))
    if held is not None:
        raise enrollments.AlreadyEnrolled(f"student {student_id} already holds {course_code} (enrollment {held})")


# --------------------------------------------------------------------------- revoke and reinstate


def revoke(*, session: Session, enrollment_id: int, cause: str) -> StudentCourseEnrollment:
    enrollment = locked(session, enrollment_id)
    if enrollment.status in (EnrollmentStatus.REVOKED, EnrollmentStatus.FAILED):
        raise NotAllowed(f"enrollment {enrollment_id} is {enrollment.status.value}: nothing to revoke")
    enrollments.revoke(session=session, enrollment=enrollment, cause=cause, reason="revoked_by_admin")
    return enrollment


def _payments_say_revoked(session: Session, enrollment: StudentCourseEnrollment) -> str | None:
    if enrollment.stripe_payment_intent_id is None:
        return None
    if enrollment.amount_total > 0 and payments.taken_back_now(session, enrollment)[1] >= enrollment.amount_total:
        return "it was refunded in full"
    lost = session.scalar(select(PaymentDispute.id).where(PaymentDispute.enrollment_id == enrollment.id,
                                                          PaymentDispute.status == DisputeStatus.LOST).limit(1))
    return "a dispute about it was lost" if lost is not None else None


def _reopened(booking: Booking | None) -> ProgressStatus:
    """What a step the revocation cancelled reopens to, by its booking: as it would stand had the booking's end
    come after the reinstatement (a no-show or a cancel outside policy misses the step)."""
    if booking is None:
        return ProgressStatus.UNBOOKED
    if booking.status == BookingStatus.ACTIVE:
        return ProgressStatus.BOOKED
    if booking.status == BookingStatus.NO_SHOW or (booking.status == BookingStatus.CANCELLED
                                                   and booking.within_policy is False):
        return ProgressStatus.MISSED
    return ProgressStatus.UNBOOKED


def reinstate(*, session: Session, enrollment_id: int, cause: str) -> StudentCourseEnrollment:
    enrollment = locked(session, enrollment_id)
    if enrollment.status == EnrollmentStatus.SUSPENDED:
        enrollments.reinstate(session=session, enrollment=enrollment, cause=cause, reason="reinstated_by_admin")
        return enrollment
    if enrollment.status != EnrollmentStatus.REVOKED:
        raise NotAllowed(f"enrollment {enrollment_id} is {enrollment.status.value}: only a revoked or suspended "
                         "enrollment can be reinstated")
    if enrollment.activated_at is None:  # revoked while its payment was pending: it never gave access
        raise NotAllowed(f"enrollment {enrollment_id} was never active (revoked before its payment settled): "
                         "enrol the student by hand instead")
    why = _payments_say_revoked(session, enrollment)
    if why:
        raise NotAllowed(f"enrollment {enrollment_id} cannot be reinstated: {why} (its next payment event would "
                         "revoke it again); enrol the student by hand instead")
    credits.lock_student(session, enrollment.student_id)
    _refuse_if_held(session, enrollment.student_id, enrollment.program_id,
                    session.get(CourseProgram, enrollment.program_id).code, other_than=enrollment.id)
    now = utcnow()
    ENROLLMENT.move(enrollment, EnrollmentStatus.ACTIVE, session=session, cause=cause, enrollment_id=enrollment.id,
                    at=now)
    enrollment.revoked_at = None
    # the steps the revocation cancelled reopen as their booking left them: booked again when it still stands,
    # missed (naming it) when it ended as a no-show or a cancel outside policy, else unbooked
    for progress in session.scalars(select(StudentCourseProgress).where(
            StudentCourseProgress.enrollment_id == enrollment.id,
            StudentCourseProgress.status == ProgressStatus.CANCELLED).order_by(StudentCourseProgress.id)):
        target = _reopened(session.get(Booking, progress.booking_id) if progress.booking_id else None)
        if target is ProgressStatus.UNBOOKED:
            progress.booking_id = progress.group_class_id = None
        progress_moves.move(session=session, progress=progress, enrollment=enrollment, cause=cause, at=now,
                            target=target)
    # a step added to the course while it was revoked (saving a course seeds only entitled enrollments)
    enrollments.provision(session=session, enrollment=enrollment, cause=cause)
    # what the revocation took from the bundle comes back as a new lot (the ledger is append-only): what it
    # took at once, and the credits of bookings cancelled since, revoked again as they were released
    taken: dict[CreditType, int] = {}
    for credit_type, cause_text, quantity in session.execute(
            select(CreditLedgerEntry.credit_type, CreditLedgerEntry.cause, CreditLedgerEntry.quantity).where(
                CreditLedgerEntry.enrollment_id == enrollment.id,
                CreditLedgerEntry.entry_type == LedgerEntryType.REVOKE)):
        if Cause.parse(cause_text).kind in (CauseKind.REVOCATION, CauseKind.BOOKING):
            taken[credit_type] = taken.get(credit_type, 0) + quantity
    for credit_type, quantity in taken.items():
        # what earlier reinstatements already gave back is not given twice
        grants = session.execute(select(CreditLedgerEntry.cause, CreditLedgerEntry.quantity).where(
            CreditLedgerEntry.enrollment_id == enrollment.id, CreditLedgerEntry.credit_type == credit_type,
            CreditLedgerEntry.entry_type == LedgerEntryType.GRANT))
        given = -int(quantity) - sum(q for text, q in grants
                                     if Cause.parse(text).kind is CauseKind.REINSTATEMENT)
        if given > 0:
            credits.issue_credits(session=session, student_id=enrollment.student_id, credit_type=credit_type,
                                  quantity=given, cause=Cause.reinstatement(enrollment.id, cause),
                                  enrollment_id=enrollment.id)
    # a partial refund applied while it was revoked claims its share of what came back (as applied before)
    payments.take_refund_shares(session=session, enrollment=enrollment)
    enrollments.complete_if_done(session=session, enrollment_id=enrollment.id, at=now, cause=cause)
    outbox.add_platform_event(
        session=session, type="enrollment.reinstated",
        data={"enrollment_id": enrollment.id, "student_id": enrollment.student_id,
              "course_code": enrollments.program_of(session, enrollment).code, "status": enrollment.status.value,
              "reason": "reinstated_by_admin"},
        dedupe_key=f"enrollment.reinstated:{enrollment.id}:{cause}", enrollment_id=enrollment.id)
    session.flush()
    return enrollment


# --------------------------------------------------------------------------- refunds


@dataclass(frozen=True)
class RefundPlan:
    enrollment_id: int
    payment_intent: str
    amount: int
    currency: str | None
    refundable: int


def check_refund(*, session: Session, enrollment_id: int, amount: Any, lock: bool = True) -> RefundPlan:
    enrollment = locked(session, enrollment_id) if lock else enrollments.get_enrollment(session, enrollment_id)
    if enrollment is None:
        raise NotFound(f"no enrollment {enrollment_id}")
    if not enrollment.stripe_payment_intent_id or enrollment.amount_total <= 0:
        raise NotRefundable(f"enrollment {enrollment_id} was not paid through Stripe: there is nothing to refund")
    if enrollment.status in (EnrollmentStatus.PENDING, EnrollmentStatus.FAILED):
        raise NotRefundable(f"enrollment {enrollment_id} is {enrollment.status.value}: its payment did not settle")
    # a refund asked for whose outcome is still unknown may yet be made: it is not left to refund again
    asked = int(session.scalar(select(func.coalesce(func.sum(AdminRefund.amount), 0)).where(
        AdminRefund.enrollment_id == enrollment.id, AdminRefund.status == "pending")))
    # Stripe's cumulative figure (a `charge.refunded` without its list of refunds) may already hold them; a refund
    # that failed is left to refund again
    refundable = payments.left_to_refund(session, payments.Purchase(enrollment=enrollment), asked=asked)
    if refundable <= 0:
        raise NotRefundable(f"enrollment {enrollment_id} is refunded in full already" if asked == 0 else
                            f"enrollment {enrollment_id} has nothing left to refund beside the refunds still "
                            f"pending ({asked} in minor units)")
    if amount is None:
        amount = refundable
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= refundable:
        raise ValidationFailed(f"amount: an integer in minor units from 1 to {refundable} (what is left to refund)",
                               field="amount")
    return RefundPlan(enrollment.id, enrollment.stripe_payment_intent_id, amount, enrollment.currency, refundable)


def _snapshot(session: Session, enrollment: StudentCourseEnrollment) -> dict[str, Any]:
    steps = {p.id: (p.status.value, p.booking_id, label) for p, label in session.execute(
        select(StudentCourseProgress, CourseStep.label).join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .where(StudentCourseProgress.enrollment_id == enrollment.id))}
    return {"status": enrollment.status.value, "steps": steps,
            "ledger_max": session.scalar(select(func.coalesce(func.max(CreditLedgerEntry.id), 0))),
            "outbox_types": None}


def preview_refund(*, session: Session, plan: RefundPlan, keep_access: bool) -> dict[str, Any]:
    """What the refund would change, found by settling it for real in a savepoint that is rolled back."""
    enrollment = locked(session, plan.enrollment_id)
    before = _snapshot(session, enrollment)
    fake = f"preview_{uuid.uuid4().hex}"
    savepoint = session.begin_nested()
    try:
        session.add(AdminRefund(enrollment_id=enrollment.id, amount=plan.amount, currency=plan.currency,
                                keep_access=keep_access, reason="preview", actor="preview", idempotency_key=fake,
                                status="succeeded", stripe_refund_id=fake))
        session.add(PaymentRefund(refund_key=fake, stripe_payment_intent_id=plan.payment_intent,
                                  enrollment_id=enrollment.id, amount=plan.amount, currency=plan.currency,
                                  full=plan.amount >= enrollment.amount_total, status="succeeded"))
        session.flush()
        payments.settle_enrollment(session=session, enrollment=enrollment, cause=f"refund:{fake}")
        session.flush()
        after = _snapshot(session, enrollment)
        credits_changed = [
            {"kind": e.credit_type.value, "quantity": e.quantity, "entry_type": e.entry_type.value, "lot": e.grant_id}
            for e in session.scalars(select(CreditLedgerEntry).where(CreditLedgerEntry.id > before["ledger_max"])
                                     .order_by(CreditLedgerEntry.id))]
        active_bookings = list(session.scalars(select(Booking.id).where(
            Booking.enrollment_id == enrollment.id, Booking.status == BookingStatus.ACTIVE).order_by(Booking.id)))
    finally:
        savepoint.rollback()
    session.expire_all()
    steps = [{"progress_id": pid, "label": was[2], "from": was[0], "to": after["steps"][pid][0],
              "booking_id": was[1]}
             for pid, was in sorted(before["steps"].items()) if after["steps"][pid][0] != was[0]]
    revoked = after["status"] == EnrollmentStatus.REVOKED.value and before["status"] != after["status"]
    return {
        "enrollment_id": plan.enrollment_id,
        "amount": plan.amount,
        "currency": plan.currency,
        "refundable": plan.refundable,
        "keep_access": keep_access,
        "enrollment_status": {"from": before["status"], "to": after["status"]},
        "credits": credits_changed,
        "steps": steps,
        # a revocation tells the platform which of the enrollment's bookings still stand
        "bookings": [{"booking_id": b, "change": "named in enrollment.revoked for the platform to cancel"}
                     for b in active_bookings] if revoked else [],
    }


def refund_intent(*, session: Session, plan: RefundPlan, keep_access: bool, reason: str, actor: str,
                  request_key: str | None) -> AdminRefund:
    row = AdminRefund(enrollment_id=plan.enrollment_id, amount=plan.amount, currency=plan.currency,
                      keep_access=keep_access, reason=reason, actor=actor, request_key=request_key,
                      idempotency_key=new_refund_key(), status="pending")
    session.add(row)
    session.flush()
    return row


def refund_outcome(*, session: Session, admin_refund_id: int, refund: dict[str, Any] | None,
                   error: str | None, final: bool) -> AdminRefund:
    """Record Stripe's answer. A refund made is applied at once, as its `refund.created` would be (the
    events that follow find it recorded); a refusal is `failed`; an unknown outcome (network, 5xx) stays
    `pending`, to be retried with the same idempotency key."""
    # the enrollment's lock first, then the refund's, the order a refund event of Stripe's takes them in
    # (`refunds.apply_refund` locks the purchase, then settles the admin refund it names)
    enrollment = locked(session, session.scalar(select(AdminRefund.enrollment_id)
                                                .where(AdminRefund.id == admin_refund_id)))
    row = session.scalar(select(AdminRefund).where(AdminRefund.id == admin_refund_id).with_for_update()
                         .execution_options(populate_existing=True))
    if row.status != "pending":
        return row
    if refund is not None:
        row.status, row.stripe_refund_id, row.last_error, row.finished_at = "succeeded", refund["id"], None, utcnow()
        session.flush()
        refunds.apply_refund(session=session, refund=refund)
    else:
        row.last_error = error
        if final:
            row.status, row.finished_at = "failed", utcnow()
            if row.keep_access:  # it no longer nets what other refunds took back
                session.flush()
                payments.settle_enrollment(session=session, enrollment=enrollment, cause=f"admin_refund:{row.id}")
    return row


def fresh_refund_key(*, session: Session, admin_refund_id: int, spent: str) -> str | None:
    """Replace a Stripe idempotency key that holds a saved error (it can never make the refund) by a fresh one,
    once: a concurrent retry that spent the same key gets the key the first one recorded. None when the refund
    is no longer pending."""
    row = session.scalar(select(AdminRefund).where(AdminRefund.id == admin_refund_id).with_for_update())
    if row is None or row.status != "pending":
        return None
    if row.idempotency_key == spent:
        row.idempotency_key = new_refund_key()
    return row.idempotency_key


def stale_pending_refunds(session: Session, *, before: datetime, limit: int) -> list[AdminRefund]:
    """Admin refunds still `pending` that were asked for at `before` or earlier, oldest first."""
    return list(session.scalars(select(AdminRefund).where(AdminRefund.status == "pending",
                                                          AdminRefund.created_at <= before)
                                .order_by(AdminRefund.id).limit(limit)))


def new_refund_key() -> str:
    return f"coursepipe-refund-{uuid.uuid4().hex}"


def refund_view(row: AdminRefund) -> dict[str, Any]:
    return {"id": row.id, "enrollment_id": row.enrollment_id, "amount": row.amount, "currency": row.currency,
            "keep_access": row.keep_access, "reason": row.reason, "actor": row.actor, "status": row.status,
            "stripe_refund_id": row.stripe_refund_id, "last_error": row.last_error}
