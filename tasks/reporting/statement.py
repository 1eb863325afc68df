"""A student's credit statement: every ledger entry with its cause in words and a running balance.

Lots that expired with credits left get a line of their own at their expiry (the ledger records no entry
for it: an expired lot is simply no longer usable), so the closing balance is what
`tasks.ledger.credits.balances` says and every step to it is on a line.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import CreditType, LedgerEntryType
from db.models import AuditEntry, Booking, CourseProgram, CreditLedgerEntry, CreditPackage, GroupClass, PackagePurchase, StudentCourseEnrollment
from db.types import utcnow
from tasks.ledger import credits
from tasks.ledger.causes import ENROLLMENT_OWNER, Cause, CauseKind


def _course_of(session: Session, enrollment_id: int) -> str:
    code = session.scalar(select(CourseProgram.code).join(
        StudentCourseEnrollment, StudentCourseEnrollment.program_id == CourseProgram.id)
        .where(StudentCourseEnrollment.id == enrollment_id))
    return f"{code} (enrollment {enrollment_id})" if code else f"enrollment {enrollment_id}"


def _package_of(session: Session, purchase_id: int) -> str:
    code = session.scalar(select(CreditPackage.code).join(PackagePurchase, PackagePurchase.package_id == CreditPackage.id)
                          .where(PackagePurchase.id == purchase_id))
    return f"package {code} (purchase {purchase_id})" if code else f"package purchase {purchase_id}"


def _class_of(session: Session, booking_id: str) -> str:
    row = session.execute(select(GroupClass.title, GroupClass.starts_at).join(Booking, Booking.class_id == GroupClass.id)
                          .where(Booking.id == booking_id)).first()
    if row is None:
        return f"booking {booking_id}"
    return f"{row.title or 'class'} on {row.starts_at:%Y-%m-%d %H:%M} UTC (booking {booking_id})"


def _by_admin(session: Session, audit_id: str, verb: str) -> str:
    entry = session.get(AuditEntry, int(audit_id))
    if entry is None:
        return f"{verb} by an admin"
    return f"{verb} by {entry.actor}: {entry.reason}" if entry.reason else f"{verb} by {entry.actor}"


def describe(session: Session, entry: CreditLedgerEntry) -> str:
    """The entry's cause in words."""
    kind = entry.entry_type
    n = abs(entry.quantity)
    credit = f"{n} {entry.credit_type.value} credit{'s' if n != 1 else ''}"
    cause = Cause.parse(entry.cause)
    owner = cause.owner
    of = (_course_of(session, owner[1]) if owner and owner[0] == ENROLLMENT_OWNER
          else _package_of(session, owner[1]) if owner else None)
    if cause.kind is CauseKind.ADJUSTMENT and cause.ref.isascii() and cause.ref.isdigit():
        return _by_admin(session, cause.ref, f"{credit} {'added' if kind == LedgerEntryType.GRANT else 'removed'}")
    if kind == LedgerEntryType.GRANT and of is not None:
        if cause.kind is CauseKind.ENROLLMENT:
            return f"{credit} in the bundle of {of}"
        if cause.kind is CauseKind.PACKAGE_PURCHASE:
            return f"{credit} bought: {of}"
        if cause.kind is CauseKind.REINSTATEMENT:
            return f"{credit} given back: {of} was reinstated"
    if cause.kind is CauseKind.BOOKING:
        booking = cause.ref
        if kind == LedgerEntryType.CONSUME:
            return f"1 {entry.credit_type.value} credit used: {_class_of(session, booking)}"
        if kind == LedgerEntryType.RELEASE:
            return f"1 {entry.credit_type.value} credit returned: booking {booking} cancelled in time"
        if kind == LedgerEntryType.REVOKE:
            return f"the returned credit of booking {booking} taken back: its purchase had been refunded"
    if cause.kind is CauseKind.REVOCATION and of is not None:
        if owner[0] == ENROLLMENT_OWNER:
            return f"{credit} unused removed: {of} was revoked (refund or lost dispute)"
        return f"{credit} unused removed: {of} refunded or disputed"
    if cause.kind is CauseKind.PARTIAL_REFUND and of is not None:
        return f"{credit} removed for a partial refund of {of}"
    if kind == LedgerEntryType.EXPIRE:
        return f"{credit} expired"
    return f"{credit} {kind.value}: {entry.cause}"


def credit_statement(*, session: Session, student_id: str, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    lines: list[tuple[datetime, int, dict[str, Any]]] = []
    for entry in session.scalars(select(CreditLedgerEntry).where(CreditLedgerEntry.student_id == student_id)
                                 .order_by(CreditLedgerEntry.created_at, CreditLedgerEntry.id)):
        lines.append((entry.created_at, entry.id, {
            "id": entry.id, "at": entry.created_at, "kind": entry.credit_type.value,
            "entry_type": entry.entry_type.value, "quantity": entry.quantity, "cause": entry.cause,
            "lot": entry.grant_id or entry.id, "expires_at": entry.expires_at,
            "description": describe(session, entry)}))
    for lot in credits.lots(session=session, student_id=student_id):
        expires = lot.grant.expires_at
        if expires is not None and expires <= now and lot.remaining > 0:
            kind = lot.grant.credit_type.value
            lines.append((expires, lot.grant.id, {
                "id": None, "at": expires, "kind": kind, "entry_type": "expire", "quantity": -lot.remaining,
                "cause": f"expiry:{lot.grant.id}", "lot": lot.grant.id, "expires_at": expires,
                "description": f"{lot.remaining} {kind} credit{'s' if lot.remaining != 1 else ''} of lot "
                               f"{lot.grant.id} expired unused"}))
    lines.sort(key=lambda line: (line[0], line[2]["id"] is None, line[1]))  # an expiry after the entries of its time
    balances = {t.value: 0 for t in CreditType}
    entries = []
    for _, _, line in lines:
        balances[line["kind"]] += line["quantity"]
        entries.append({**line, "at": line["at"].isoformat(),
                        "expires_at": line["expires_at"].isoformat() if line["expires_at"] else None,
                        "balance": balances[line["kind"]], "balances": dict(balances)})
    return {"student_id": student_id, "entries": entries, "balances": balances}
