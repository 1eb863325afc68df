"""What a purchase converges to, derived from its recorded payment facts.

Refund and dispute handlers first record a fact idempotently (a `payment_refund` row per Stripe
refund id, a `payment_dispute` row per dispute id, the highest refunded total Stripe reported on
the purchase) and then call `settle_*`, which derives the state from all the facts at once. The
outcome therefore does not depend on the order the events arrived in, nor on how often they came:

- refunded in full, or any dispute lost      → revoked (unconsumed credits revoked, open steps cancelled)
- otherwise, refunded in part                 → kept; each lot loses floor(quantity × refunded / paid)
- otherwise, a dispute open                   → suspended
  (refunds are counted net of those the studio made keeping access: `tasks.purchases.goodwill`)
- otherwise, suspended with no dispute open   → reinstated (active)

Pending (unsettled) and failed purchases are owed nothing, so only revocation applies to them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.enums import DisputeStatus, EnrollmentStatus, PurchaseStatus
from db.models import PackagePurchase, PaymentDispute, PaymentRefund, StudentCourseEnrollment, TransitionLog
from tasks.ledger import credits
from tasks.ledger.causes import ENROLLMENT_OWNER, PACKAGE_OWNER, Cause, CauseKind
from tasks.enrollments import services as enrollments
from tasks.purchases import goodwill
from tasks.purchases.counted import counted_once, going_refund
from tasks.purchases.shapes import REFUND_NOT_COUNTED
from tasks.errors import PermanentError, WaitFor
from tasks.events import stripe_id
from tasks.machines import ENROLLMENT, PACKAGE_PURCHASE


@dataclass
class Purchase:
    enrollment: StudentCourseEnrollment | None = None
    package_purchase: PackagePurchase | None = None

    @property
    def found(self) -> bool:
        return self.enrollment is not None or self.package_purchase is not None

    @property
    def row(self):
        return self.enrollment if self.enrollment is not None else self.package_purchase


def alert_context(session: Session, purchase: Purchase) -> dict[str, Any]:
    """What every admin alert about a purchase names: the course, the student, the purchase's row."""
    enrollment, package = purchase.enrollment, purchase.package_purchase
    return {
        "course_code": enrollments.program_of(session, enrollment).code if enrollment is not None else None,
        "student_id": purchase.row.student_id,
        "enrollment_id": enrollment.id if enrollment is not None else None,
        "package_purchase_id": package.id if package is not None else None,
    }


def payment_intent_of(obj: dict[str, Any], what: str, ownership: Any = None) -> str:
    """The payment intent a Stripe refund, charge or dispute is about (an id, or expanded); with an
    `ownership` (`tasks.purchases.ownership.Ownership`), asked of Stripe when the event does not say."""
    if ownership is not None:
        return ownership.payment_intent(obj, what)
    pi = stripe_id(obj.get("payment_intent"))
    if not pi:
        raise PermanentError(f"{what} {obj.get('id')} has no payment_intent: it cannot be matched to a purchase")
    return pi


def purchase_or_wait(session: Session, payment_intent: str, ownership: Any = None) -> Purchase:
    """The purchase paid by `payment_intent` (row-locked); an event about it waits until it exists, unless
    `ownership` learns from Stripe that no course or package of ours is behind the payment (Ignored)."""
    purchase = purchase_for_payment(session, payment_intent, lock=True)
    if not purchase.found:
        if ownership is not None:
            ownership.check(session, payment_intent)
        raise WaitFor(f"payment:{payment_intent}", f"no purchase paid by {payment_intent} yet")
    return purchase


def purchase_for_payment(session: Session, payment_intent: str, *, lock: bool = True) -> Purchase:
    """The enrollment or package purchase paid by this payment intent (row-locked)."""
    query = select(StudentCourseEnrollment).where(StudentCourseEnrollment.stripe_payment_intent_id == payment_intent)
    if lock:
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE: see credits.lock_student
    enrollment = session.scalar(query.order_by(StudentCourseEnrollment.id).limit(1))
    if enrollment is not None:
        return Purchase(enrollment=enrollment)
    query = select(PackagePurchase).where(PackagePurchase.stripe_payment_intent_id == payment_intent)
    if lock:
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE: see credits.lock_student
    return Purchase(package_purchase=session.scalar(query.order_by(PackagePurchase.id).limit(1)))




def refunded_total(session: Session, purchase: Purchase, *, asked: int = 0, going: int | None = None) -> int:
    """The highest refunded total known: Stripe's cumulative figure, or the sum of counted refunds by id
    (plus `asked`: refunds asked for whose outcome is unknown, which Stripe's figure may already hold).

    A refund that failed after it was counted is left out of the sum; the stored total keeps what
    was once reached (what a refund took back stays taken back: `tasks.purchases.refunds`).
    """
    going = _going(session, purchase) if going is None else going  # `going`: the caller read it already
    total = max(purchase.row.amount_refunded or 0, going + asked)
    paid = purchase.row.amount_total or 0
    # Stripe never refunds more than was paid: a figure above it holds a refund that failed before another was
    # made, its failure not handled yet
    return min(total, paid) if paid > 0 else total


def left_to_refund(session: Session, purchase: Purchase, *, asked: int = 0) -> int:
    """What may still be refunded: the amount paid, less the refunds going through now (by id), less the more of
    what only Stripe's cumulative figure holds (beyond every refund known by id that ever went through) and
    the refunds asked whose outcome is unknown (which that figure may already hold).

    Unlike `refunded_total`, a refund that failed is not held: its money is back with the studio, which may
    refund it again (`refunded_total` keeps it for what it took back). With no refund failed, both agree.
    Stripe's total is taken to hold every refund that went through before it was reported; one reported after
    a failure it no longer holds makes this figure too high by that refund, and Stripe refuses the excess (the
    admin refund is recorded failed, nothing else moves): never too low, which would keep money from the
    student."""
    going, once = session.execute(select(_refunded(going_refund()), _refunded(counted_once()))
                                  .where(_refunds_of(purchase))).one()
    beyond = max((purchase.row.amount_refunded or 0) - int(once), 0)
    return (purchase.row.amount_total or 0) - int(going) - max(beyond, asked)


def _refunds_of(purchase: Purchase):
    """SQL: the `payment_refund` rows of this purchase."""
    column = PaymentRefund.enrollment_id if purchase.enrollment is not None else PaymentRefund.package_purchase_id
    return column == purchase.row.id


def _refunded(counts):
    """SQL: the amount of the refunds that `counts` (`tasks.purchases.counted`) takes."""
    return func.coalesce(func.sum(case((counts, PaymentRefund.amount), else_=0)), 0)


def _going(session: Session, purchase: Purchase) -> int:
    """The refunds going through now, by id (`tasks.purchases.counted`)."""
    return int(session.scalar(select(func.coalesce(func.sum(PaymentRefund.amount), 0))
                              .where(_refunds_of(purchase), going_refund())))


def taken_back(session: Session, enrollment: StudentCourseEnrollment, total: int, going: int | None = None) -> int:
    """What the refunds take back (access, credits), `total` being the refunded total: refunds made keeping access
    take nothing. Judged on the total (the highest reached: a refund that failed after it counted keeps what it
    took), net of every kept refund it may hold; and on the refunds going through now, net of the kept ones
    among them. The higher wins: a kept refund that failed takes nothing, and a refund made again after one
    failed is not counted twice."""
    going = _going(session, Purchase(enrollment=enrollment)) if going is None else going
    kept_going, kept_once = goodwill.kept_amounts(session, enrollment.id)
    return max(total - kept_once, going - kept_going, 0)


def taken_back_now(session: Session, enrollment: StudentCourseEnrollment) -> tuple[int, int]:
    """(refunded total, what it takes back), the refunds going through read once for both."""
    going = _going(session, Purchase(enrollment=enrollment))
    total = refunded_total(session, Purchase(enrollment=enrollment), going=going)
    return total, taken_back(session, enrollment, total, going)


def _disputes(session: Session, purchase: Purchase) -> list[PaymentDispute]:
    if purchase.enrollment is not None:
        where = PaymentDispute.enrollment_id == purchase.enrollment.id
    else:
        # a package purchase has no column on the dispute: match by its payment intent
        where = PaymentDispute.stripe_payment_intent_id == purchase.package_purchase.stripe_payment_intent_id
    return list(session.scalars(select(PaymentDispute).where(where).order_by(PaymentDispute.id)))


def _revoke_in_proportion(session: Session, *, lots: list[credits.Lot], refunded: int, paid: int,
                          cause: Cause) -> None:
    """Partial refund: each lot ends with floor(quantity × refunded / paid) revoked under this cause.

    The target is computed from the cumulative refunded total, so two partial refunds in either
    order revoke the same as one of their sum; what was consumed is never taken back, but what the lot
    could not give now is taken from credits that come back to it later (`credits.take_share`).
    """
    if paid <= 0 or refunded <= 0:
        return
    for lot in lots:
        if Cause.parse(lot.grant.cause).kind is CauseKind.REINSTATEMENT:
            continue  # it continues the bundle's lot: the bundle's share is taken from both (`take_share`)
        credits.take_share(session=session, grant=lot.grant, cause=cause,
                           target=lot.grant.quantity * min(refunded, paid) // paid)


def take_refund_shares(*, session: Session, enrollment: StudentCourseEnrollment, refunded: int | None = None) -> None:
    """What the enrollment's partial refunds claim of its credits (the caller holds its row lock): settled with
    every refund, and again when a reinstatement gives credits back. `refunded`: net of refunds made keeping
    access, when the caller has it."""
    if refunded is None:
        refunded = taken_back_now(session, enrollment)[1]
    _revoke_in_proportion(session, lots=credits.lots(session=session, enrollment_id=enrollment.id),
                          refunded=refunded, paid=enrollment.amount_total,
                          cause=Cause.partial_refund(ENROLLMENT_OWNER, enrollment.id))


def settle_enrollment(*, session: Session, enrollment: StudentCourseEnrollment, cause: str) -> None:
    """Apply every recorded refund and dispute of this enrollment (caller holds its row lock)."""
    purchase = Purchase(enrollment=enrollment)
    # a refund the studio made keeping access takes nothing away (tasks.purchases.goodwill)
    enrollment.amount_refunded, refunded = taken_back_now(session, enrollment)
    disputes = _disputes(session, purchase)
    lost = [d for d in disputes if d.status == DisputeStatus.LOST]
    still_open = [d for d in disputes if d.status == DisputeStatus.OPEN]
    if enrollment.amount_total > 0 and refunded >= enrollment.amount_total:
        enrollments.revoke(session=session, enrollment=enrollment, cause=cause, reason="refunded")
        return
    if lost:
        enrollments.revoke(session=session, enrollment=enrollment, cause=_dispute_cause(lost[0]), reason="dispute_lost")
        return
    if enrollment.status not in enrollments.ENTITLED:
        return  # a revoked enrollment's shares are taken when a reinstatement gives its credits back
    take_refund_shares(session=session, enrollment=enrollment, refunded=refunded)
    if still_open:
        if enrollment.status == EnrollmentStatus.SUSPENDED:
            return  # already (most of a disputed purchase's events): the log need not be read
        # each open dispute suspends once: an admin who reinstated the enrollment since has overridden it, and the
        # dispute's later events (a refund, a redelivery) leave their decision standing; a new dispute suspends
        suspended_by = _suspended_by(session, enrollment, still_open)
        opening = next((d for d in still_open if _dispute_cause(d) not in suspended_by), None)
        if opening is not None:
            enrollments.suspend(session=session, enrollment=enrollment, cause=_dispute_cause(opening),
                                reason="dispute_opened")
    else:
        enrollments.reinstate(session=session, enrollment=enrollment, cause=cause, reason="dispute_won")


def _dispute_cause(dispute: PaymentDispute) -> str:
    return f"dispute:{dispute.stripe_dispute_id}"


def _suspended_by(session: Session, enrollment: StudentCourseEnrollment, disputes: list[PaymentDispute]) -> set[str]:
    """The causes among these disputes' that have had their say: each suspended the enrollment before (the
    transition log keeps every move of an enrollment), or was known when an admin reinstated it from `revoked`
    (the admin decided with the dispute open, as over a suspension: a dispute delivered while the enrollment was
    revoked had nothing to suspend)."""
    log = (TransitionLog.entity == ENROLLMENT.entity, TransitionLog.entity_id == str(enrollment.id))
    causes = set(session.scalars(select(TransitionLog.cause).where(
        *log, TransitionLog.to_status == EnrollmentStatus.SUSPENDED.value,
        TransitionLog.cause.in_([_dispute_cause(d) for d in disputes]))))
    reinstated = session.scalar(select(func.max(TransitionLog.at)).where(
        *log, TransitionLog.from_status == EnrollmentStatus.REVOKED.value,
        TransitionLog.to_status == EnrollmentStatus.ACTIVE.value))
    if reinstated is not None:
        causes.update(_dispute_cause(d) for d in disputes if d.created_at <= reinstated)
    return causes


def settle_package(*, session: Session, purchase: PackagePurchase, cause: str) -> None:
    """A package purchase: refunded in full or a dispute lost → unconsumed credits revoked, `refunded`."""
    wrapped = Purchase(package_purchase=purchase)
    refunded = refunded_total(session, wrapped)
    purchase.amount_refunded = refunded
    lost = any(d.status == DisputeStatus.LOST for d in _disputes(session, wrapped))
    if (purchase.amount_total > 0 and refunded >= purchase.amount_total) or lost:
        credits.revoke_unconsumed(session=session, cause=Cause.revocation(PACKAGE_OWNER, purchase.id),
                                  package_purchase_id=purchase.id)
        if purchase.status in (PurchaseStatus.PAID, PurchaseStatus.PENDING):
            PACKAGE_PURCHASE.move(purchase, PurchaseStatus.REFUNDED, session=session, cause=cause)
        return
    if purchase.status != PurchaseStatus.PAID:
        return
    _revoke_in_proportion(session, lots=credits.lots(session=session, package_purchase_id=purchase.id),
                          refunded=refunded, paid=purchase.amount_total,
                          cause=Cause.partial_refund(PACKAGE_OWNER, purchase.id))


def settle(*, session: Session, purchase: Purchase, cause: str) -> None:
    if purchase.enrollment is not None:
        settle_enrollment(session=session, enrollment=purchase.enrollment, cause=cause)
    elif purchase.package_purchase is not None:
        settle_package(session=session, purchase=purchase.package_purchase, cause=cause)
