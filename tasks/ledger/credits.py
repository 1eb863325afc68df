"""The credit ledger: append-only entries per student and credit type; balances are sums.

Every entry is keyed by its cause (`idempotency_key`), so the same purchase, booking or refund can
never count twice. Grants are lots; consume / release / revoke / expire entries point at the lot
they draw on, so "remaining on a lot" is a sum too. Package purchases and course bundles both
grant through `issue_credits`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, aliased

from db.enums import CreditType, EnrollmentStatus, LedgerEntryType, PurchaseStatus
from db.models import CreditLedgerEntry, CreditShare, PackagePurchase, Student, StudentCourseEnrollment
from db.types import utcnow
from tasks.errors import TaskError
from tasks.ledger.causes import Cause, CauseKind, Keys


class NoCredit(TaskError):
    """Raised when a student has no unexpired credit of the asked type left."""


@dataclass(frozen=True)
class Lot:
    grant: CreditLedgerEntry
    remaining: int


def lock_student(session: Session, student_id: str) -> Student | None:
    """Serialize ledger changes per student (row lock on PostgreSQL; SQLite writers are serial).

    FOR NO KEY UPDATE, as the purchase rows (enrollments, package purchases) are locked: these locks exclude each
    other as FOR UPDATE would, but not the key-share lock a foreign key check takes. A FOR UPDATE on a purchase
    row made the ledger entry a spend or release writes under the student's lock wait for a refund holding the
    purchase and wanting the student: a deadlock."""
    return session.scalar(select(Student).where(Student.id == student_id).with_for_update(key_share=True))


def _existing(session: Session, key: str) -> CreditLedgerEntry | None:
    return session.scalar(select(CreditLedgerEntry).where(CreditLedgerEntry.idempotency_key == key))


def _add(session: Session, **fields) -> CreditLedgerEntry:
    entry = CreditLedgerEntry(**fields)
    session.add(entry)
    session.flush()
    return entry


def _add_on_lot(session: Session, of: CreditLedgerEntry, grant_id: int, **fields) -> CreditLedgerEntry:
    """An entry on the lot `grant_id`, for the student, credit type and purchase of `of` (the lot's grant, or an
    entry already written on it)."""
    return _add(session, student_id=of.student_id, credit_type=of.credit_type, grant_id=grant_id,
                enrollment_id=of.enrollment_id, package_purchase_id=of.package_purchase_id, **fields)


def _remaining(session: Session, grant: CreditLedgerEntry) -> int:
    """What the lot holds now: its grant less every entry written on it."""
    return grant.quantity + int(session.scalar(select(func.coalesce(func.sum(CreditLedgerEntry.quantity), 0))
                                               .where(CreditLedgerEntry.grant_id == grant.id)))


def issue_credits(
    *,
    session: Session,
    student_id: str,
    credit_type: CreditType,
    quantity: int,
    cause: Cause,
    enrollment_id: int | None = None,
    package_purchase_id: int | None = None,
    expires_at: datetime | None = None,
    fresh: bool = False,
) -> CreditLedgerEntry:
    """Grant a lot of credits once per (cause, credit type); a repeat returns the first grant.

    `fresh`: the cause was created in this transaction, so no grant can exist yet (the look-up is
    skipped; the unique key still refuses a second grant).
    """
    key = Keys.grant(cause, credit_type)
    existing = None if fresh else _existing(session, key)
    if existing is not None:
        return existing
    return _add(
        session,
        idempotency_key=key,
        student_id=student_id,
        credit_type=credit_type,
        entry_type=LedgerEntryType.GRANT,
        quantity=quantity,
        cause=str(cause),
        enrollment_id=enrollment_id,
        package_purchase_id=package_purchase_id,
        expires_at=expires_at,
    )


def lots(
    *,
    session: Session,
    student_id: str | None = None,
    credit_type: CreditType | None = None,
    enrollment_id: int | None = None,
    package_purchase_id: int | None = None,
) -> list[Lot]:
    """Grants with what remains on each (grant + every entry drawing on it)."""
    child = aliased(CreditLedgerEntry)
    remaining = (
        select(func.coalesce(func.sum(child.quantity), 0))
        .where(child.grant_id == CreditLedgerEntry.id)
        .scalar_subquery()
    )
    query = select(CreditLedgerEntry, CreditLedgerEntry.quantity + remaining).where(
        CreditLedgerEntry.entry_type == LedgerEntryType.GRANT
    )
    if student_id is not None:
        query = query.where(CreditLedgerEntry.student_id == student_id)
    if credit_type is not None:
        query = query.where(CreditLedgerEntry.credit_type == credit_type)
    if enrollment_id is not None:
        query = query.where(CreditLedgerEntry.enrollment_id == enrollment_id)
    if package_purchase_id is not None:
        query = query.where(CreditLedgerEntry.package_purchase_id == package_purchase_id)
    # soonest-expiring first; never-expiring last; then oldest
    query = query.order_by(
        case((CreditLedgerEntry.expires_at.is_(None), 1), else_=0),
        CreditLedgerEntry.expires_at,
        CreditLedgerEntry.id,
    )
    return [Lot(grant, int(left)) for grant, left in session.execute(query)]


def balances(*, session: Session, student_id: str, now: datetime | None = None) -> dict[str, int]:
    """Usable balance by credit type: unexpired remaining on every lot, packages and bundles together."""
    now = now or utcnow()
    totals = {t.value: 0 for t in CreditType}
    for lot in lots(session=session, student_id=student_id):
        if lot.remaining > 0 and (lot.grant.expires_at is None or lot.grant.expires_at > now):
            totals[lot.grant.credit_type.value] += lot.remaining
    return totals


def consume_credit(
    *, session: Session, student_id: str, credit_type: CreditType, booking_id: str, now: datetime | None = None
) -> CreditLedgerEntry:
    """Spend one credit for a booking from the soonest-expiring usable lot. Once per booking."""
    key = Keys.consume(booking_id)
    existing = _existing(session, key)
    if existing is not None:
        return existing
    now = now or utcnow()
    lock_student(session, student_id)
    for lot in lots(session=session, student_id=student_id, credit_type=credit_type):
        if lot.remaining > 0 and (lot.grant.expires_at is None or lot.grant.expires_at > now):
            return _add_on_lot(session, lot.grant, lot.grant.id, idempotency_key=key,
                               entry_type=LedgerEntryType.CONSUME, quantity=-1, cause=str(Cause.booking(booking_id)),
                               booking_id=booking_id)
    raise NoCredit(f"no {credit_type.value} credit left for student {student_id}")


def consumption_for(session: Session, booking_id: str) -> CreditLedgerEntry | None:
    return _existing(session, Keys.consume(booking_id))


def release_credit(*, session: Session, booking_id: str) -> CreditLedgerEntry | None:
    """Give back the credit a booking consumed (cancel within policy). Once per booking.

    If the lot's purchase stands revoked (refunded in full, a dispute lost), the released credit is
    revoked again at once, so a refund can never be undone by a later cancellation. A purchase that still owes
    a partial refund part of its share (its credits were spent when the refund came: `take_share`) pays it
    with the released credit, as the refund would have taken it had the cancel come first. One that gave
    its whole share, or lost credits taken by hand, keeps a released credit usable.
    """
    consumed = consumption_for(session, booking_id)
    if consumed is None:
        return None
    key = Keys.release(booking_id)
    existing = _existing(session, key)
    if existing is not None:
        return existing
    lock_student(session, consumed.student_id)  # a refund settling the lot concurrently goes before or after
    released = _add_on_lot(session, consumed, consumed.grant_id, idempotency_key=key,
                           entry_type=LedgerEntryType.RELEASE, quantity=1, cause=str(Cause.booking(booking_id)),
                           booking_id=booking_id)
    if _revoked_now(session, consumed):
        cause = Cause.booking(booking_id)
    else:
        cause = _share_owed(session, consumed)
    if cause is not None:
        _add_on_lot(session, consumed, consumed.grant_id, idempotency_key=Keys.revoke_release(booking_id),
                    entry_type=LedgerEntryType.REVOKE, quantity=-1, cause=str(cause), booking_id=booking_id)
    return released


def spend_again(*, session: Session, booking_id: str, now: datetime | None = None) -> CreditLedgerEntry | None:
    """Undo a release that should not have been: the booking's credit, given back (`release_credit`), is spent
    again on the lot it came from. Once per booking. Nothing when the release was not made, or was revoked
    already (its purchase stands revoked), or the lot no longer holds the credit (spent since, or expired): the
    student keeps what they did with it."""
    released = _existing(session, Keys.release(booking_id))
    if released is None or _existing(session, Keys.revoke_release(booking_id)) is not None:
        return None
    key = Keys.consume_again(booking_id)
    existing = _existing(session, key)
    if existing is not None:
        return existing
    lock_student(session, released.student_id)
    now = now or utcnow()
    grant = session.get(CreditLedgerEntry, released.grant_id)  # the lot, read alone (not the student's every lot)
    if grant is None or _remaining(session, grant) < 1 or (grant.expires_at is not None and grant.expires_at <= now):
        return None
    return _add_on_lot(session, released, released.grant_id, idempotency_key=key, entry_type=LedgerEntryType.CONSUME,
                       quantity=-1, cause=str(Cause.booking(booking_id)), booking_id=booking_id)


def _revoked_under(session: Session, cause: str, grant: CreditLedgerEntry) -> int:
    """How many credits of the lot's type are revoked under one cause, in all (a cause names its purchase, so these
    are that purchase's: its lot and the lots reinstatements gave back). Read through the student's entries of that
    type (`ix_credit_ledger_entry_student_type`): the cause has no index of its own."""
    return -int(session.scalar(select(func.coalesce(func.sum(CreditLedgerEntry.quantity), 0)).where(
        CreditLedgerEntry.student_id == grant.student_id,
        CreditLedgerEntry.credit_type == grant.credit_type,
        CreditLedgerEntry.cause == cause,
        CreditLedgerEntry.entry_type == LedgerEntryType.REVOKE,
    )))


def _same_purchase(grant: CreditLedgerEntry):
    """The condition on grants: the purchase and credit type of `grant` (None for credits given by hand)."""
    if grant.enrollment_id is not None:
        owner = CreditLedgerEntry.enrollment_id == grant.enrollment_id
    elif grant.package_purchase_id is not None:
        owner = CreditLedgerEntry.package_purchase_id == grant.package_purchase_id
    else:
        return None
    return owner & (CreditLedgerEntry.credit_type == grant.credit_type) & (
        CreditLedgerEntry.entry_type == LedgerEntryType.GRANT)


def _share_owed(session: Session, consumed: CreditLedgerEntry) -> Cause | None:
    """The partial refund that still claims credits of this purchase and type, if any (see `take_share`)."""
    same = _same_purchase(consumed)
    if same is None:
        return None
    for share in session.scalars(select(CreditShare).join(CreditLedgerEntry, CreditLedgerEntry.id == CreditShare.grant_id)
                                 .where(same).order_by(CreditShare.cause)):
        if _revoked_under(session, share.cause, consumed) < share.target:
            return Cause.parse(share.cause)
    return None


def take_share(*, session: Session, grant: CreditLedgerEntry, cause: Cause, target: int) -> None:
    """A partial refund's share of one lot: `target` credits revoked under `cause` in all, as far as the credits
    hold. Taken from the lot, then from the lots reinstatements of the same purchase gave back (they continue
    it: what a revocation took and a reinstatement returned). The target is kept (`credit_share`): what the
    credits could not give (spent to the last) is paid by the next credits that come back (`release_credit`),
    so the end is the same whichever of the refund and a cancellation is applied first. The target only rises;
    a repeat adds nothing.
    """
    lock_student(session, grant.student_id)  # a release paying this share goes before or after, not between
    share = session.scalar(select(CreditShare).where(CreditShare.grant_id == grant.id,
                                                     CreditShare.cause == str(cause)).with_for_update())
    if share is None:
        share = CreditShare(grant_id=grant.id, cause=str(cause), target=target)
        session.add(share)
    share.target = max(share.target, target)
    owed = share.target - _revoked_under(session, str(cause), grant)
    if owed <= 0:
        return  # the usual case when a refund is settled again
    taken = revoke_from_lot(session=session, grant=grant, quantity=owed,
                            key=Keys.revoke_share(cause, grant.id, share.target), cause=cause)
    owed += taken.quantity if taken is not None else 0
    continuations = [lot.grant for lot in lots(session=session, enrollment_id=grant.enrollment_id,
                                               package_purchase_id=grant.package_purchase_id,
                                               credit_type=grant.credit_type) if lot.grant.id > grant.id
                     and Cause.parse(lot.grant.cause).kind is CauseKind.REINSTATEMENT] if owed > 0 else []
    for lot in continuations:  # read only when the lot itself could not give the share
        if owed <= 0:
            return
        taken = revoke_from_lot(session=session, grant=lot, quantity=owed,
                                key=Keys.revoke_share(cause, lot.id, share.target), cause=cause)
        owed += taken.quantity if taken is not None else 0


def _revoked_now(session: Session, consumed: CreditLedgerEntry) -> bool:
    """The consumed credit's purchase stands revoked: an enrollment until an admin reinstates it, a package
    (refunded in full or a dispute lost) for good. Judged from the purchase, not from its lot: a lot spent to
    its last credit when the purchase was revoked carries no revocation entry."""
    if consumed.enrollment_id is not None:
        return session.scalar(select(StudentCourseEnrollment.status).where(
            StudentCourseEnrollment.id == consumed.enrollment_id)) == EnrollmentStatus.REVOKED
    if consumed.package_purchase_id is not None:
        return session.scalar(select(PackagePurchase.status).where(
            PackagePurchase.id == consumed.package_purchase_id)) == PurchaseStatus.REFUNDED
    return False


def revoke_unconsumed(
    *,
    session: Session,
    cause: Cause,
    enrollment_id: int | None = None,
    package_purchase_id: int | None = None,
) -> list[CreditLedgerEntry]:
    """Revoke what is left on a purchase's lots. Consumed credits stay on record; a repeat adds nothing.

    One revoke entry per (cause, lot), unless credits came back to the lot since (a booking cancelled while
    an admin had reinstated the enrollment): a revocation after that takes them too, keyed by the lot's
    latest entry, so the same state is never revoked twice.
    """
    if enrollment_id is None and package_purchase_id is None:
        raise ValueError("revoke_unconsumed needs an enrollment or a package purchase")
    entries = []
    held = lots(session=session, enrollment_id=enrollment_id, package_purchase_id=package_purchase_id)
    if held:  # what remains is read again after a concurrent spend or release (one student holds them all)
        lock_student(session, held[0].grant.student_id)
        held = lots(session=session, enrollment_id=enrollment_id, package_purchase_id=package_purchase_id)
    for lot in held:
        if lot.remaining <= 0:
            continue
        key = Keys.revoke(cause, lot.grant.id)
        if _existing(session, key) is not None:
            latest = session.scalar(select(func.max(CreditLedgerEntry.id)).where(
                CreditLedgerEntry.grant_id == lot.grant.id))
            key = Keys.revoke_again(cause, lot.grant.id, latest)
            if _existing(session, key) is not None:
                continue
        entries.append(_add_on_lot(session, lot.grant, lot.grant.id, idempotency_key=key,
                                   entry_type=LedgerEntryType.REVOKE, quantity=-lot.remaining, cause=str(cause)))
    return entries


def revoke_from_lot(
    *, session: Session, grant: CreditLedgerEntry, quantity: int, key: str, cause: Cause
) -> CreditLedgerEntry | None:
    """Revoke up to `quantity` of what remains on one lot, once per idempotency `key` (e.g. a partial
    refund's step, `Keys.revoke_share`).

    Never more than remains: consumed credits stay on record. A repeat of the key adds nothing.
    """
    idempotency_key = key
    if quantity <= 0 or _existing(session, idempotency_key) is not None:
        return None
    lock_student(session, grant.student_id)  # what remains is read after a concurrent spend or release
    amount = min(quantity, _remaining(session, grant))
    if amount <= 0:
        return None
    return _add_on_lot(session, grant, grant.id, idempotency_key=idempotency_key, entry_type=LedgerEntryType.REVOKE,
                       quantity=-amount, cause=str(cause))
