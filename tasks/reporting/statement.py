"""A student's credit statement: every ledger entry with its cause in words and a running balance.

Lots that expired with credits left get a line of their own at their expiry (the ledger records no entry
for it: an expired lot is simply no longer usable), taking off what the lot held then. An entry on a lot
after its expiry (a booking on it cancelled in time, a refund revoking it) is listed but moves no balance
(`counted: false`): the lot was no longer usable. A credit that a booking made before the expiry spent, applied
after it (the workers behind), is spent then: it is listed and counted at the booking's time, as the ledger
spent it. So the closing balance is what
`tasks.ledger.credits.balances` says, and every step to it is on a line.

A manual adjustment's line carries the reason the admin wrote. Which admin made it is said only where admins
read (`name_admins=True`: the dashboard's student page and timelines); the platform's statement, which a
student may be shown, says "by the studio".
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
from tasks.ledger.causes import ENROLLMENT_OWNER, Cause, CauseKind, Keys


class Names:
    """What descriptions name — a course by its enrollment, a package by its purchase, a class by its booking, an
    admin by the audit entry — looked up once each. `prefetch` reads those of many entries in one query a kind,
    so a statement of a thousand entries costs a handful of queries, not a thousand. `name_admins`: an
    adjustment names the admin who made it (admins' views); else "the studio" (the platform's)."""

    # kind: (the query of (key, value…) rows, its key column)
    QUERIES = {
        "course": (select(StudentCourseEnrollment.id, CourseProgram.code).join(
            CourseProgram, StudentCourseEnrollment.program_id == CourseProgram.id), StudentCourseEnrollment.id),
        "package": (select(PackagePurchase.id, CreditPackage.code).join(
            CreditPackage, PackagePurchase.package_id == CreditPackage.id), PackagePurchase.id),
        "class": (select(Booking.id, GroupClass.title, GroupClass.starts_at).join(
            GroupClass, Booking.class_id == GroupClass.id), Booking.id),
        "admin": (select(AuditEntry.id, AuditEntry.actor, AuditEntry.reason), AuditEntry.id),
    }

    def __init__(self, session: Session, *, name_admins: bool = False) -> None:
        self.session = session
        self.name_admins = name_admins
        self.found: dict[str, dict] = {kind: {} for kind in self.QUERIES}

    def prefetch(self, entries: list[CreditLedgerEntry]) -> None:
        wanted: dict[str, set] = {kind: set() for kind in self.QUERIES}
        for entry in entries:
            cause = Cause.parse(entry.cause)
            owner = cause.owner
            if owner:
                wanted["course" if owner[0] == ENROLLMENT_OWNER else "package"].add(owner[1])
            if cause.kind is CauseKind.BOOKING and entry.entry_type == LedgerEntryType.CONSUME:
                wanted["class"].add(cause.ref)
            if cause.kind is CauseKind.ADJUSTMENT and cause.ref.isascii() and cause.ref.isdigit():
                wanted["admin"].add(int(cause.ref))
        for kind, keys in wanted.items():
            self._load(kind, keys)

    def _load(self, kind: str, keys: set) -> None:
        cache, (query, key_column) = self.found[kind], self.QUERIES[kind]
        keys = sorted(k for k in keys if k not in cache)
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            cache.update(dict.fromkeys(chunk))
            for row in self.session.execute(query.where(key_column.in_(chunk))):
                cache[row[0]] = tuple(row[1:])

    def _get(self, kind: str, key) -> tuple | None:
        self._load(kind, {key})
        return self.found[kind][key]

    def course(self, enrollment_id: int) -> str:
        row = self._get("course", enrollment_id)
        return f"{row[0]} (enrollment {enrollment_id})" if row else f"enrollment {enrollment_id}"

    def package(self, purchase_id: int) -> str:
        row = self._get("package", purchase_id)
        return f"package {row[0]} (purchase {purchase_id})" if row else f"package purchase {purchase_id}"

    def class_of(self, booking_id: str) -> str:
        row = self._get("class", booking_id)
        if row is None:
            return f"booking {booking_id}"
        title, starts_at = row
        return f"{title or 'class'} on {starts_at:%Y-%m-%d %H:%M} UTC (booking {booking_id})"

    def by_admin(self, audit_id: str, verb: str) -> str:
        row = self._get("admin", int(audit_id))
        if row is None:
            return f"{verb} by an admin" if self.name_admins else f"{verb} by the studio"
        actor, reason = row
        who = actor if self.name_admins else "the studio"
        return f"{verb} by {who}: {reason}" if reason else f"{verb} by {who}"


def describe(session: Session, entry: CreditLedgerEntry, names: Names | None = None) -> str:
    """The entry's cause in words (`names`: the look-ups shared by a statement's entries)."""
    names = names or Names(session)
    kind = entry.entry_type
    n = abs(entry.quantity)
    credit = f"{n} {entry.credit_type.value} credit{'s' if n != 1 else ''}"
    cause = Cause.parse(entry.cause)
    owner = cause.owner
    of = (names.course(owner[1]) if owner and owner[0] == ENROLLMENT_OWNER
          else names.package(owner[1]) if owner else None)
    if cause.kind is CauseKind.ADJUSTMENT and cause.ref.isascii() and cause.ref.isdigit():
        return names.by_admin(cause.ref, f"{credit} {'added' if kind == LedgerEntryType.GRANT else 'removed'}")
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
            return f"1 {entry.credit_type.value} credit used: {names.class_of(booking)}"
        if kind == LedgerEntryType.RELEASE:
            return f"1 {entry.credit_type.value} credit returned: booking {booking} cancelled in time"
        if kind == LedgerEntryType.REVOKE:
            return f"the returned credit of booking {booking} taken back: its purchase had been refunded"
    if cause.kind is CauseKind.REVOCATION and of is not None:
        if owner[0] == ENROLLMENT_OWNER:
            return f"{credit} unused removed: {of} was revoked (refunded, a dispute lost, or by the studio)"
        return f"{credit} unused removed: {of} refunded or disputed"
    if cause.kind is CauseKind.PARTIAL_REFUND and of is not None:
        if entry.booking_id is not None:  # the share the refund could not take when the lot was spent
            return f"the returned credit of booking {entry.booking_id} taken for a partial refund of {of}"
        return f"{credit} removed for a partial refund of {of}"
    if kind == LedgerEntryType.EXPIRE:
        return f"{credit} expired"
    return f"{credit} {kind.value}: {entry.cause}"


def _booked_before_expiry(session: Session, ledger: list[CreditLedgerEntry],
                          expired: dict[int, datetime]) -> dict[int, datetime]:
    """The credits spent on an expired lot by a booking made before the expiry but processed after it (the workers
    behind), by their entry's id: at their booking's time, when the credit was spent (`credits.consume_credit`
    judges the lot at the booking's time too). A credit spent again (`credits.spend_again`: a late cancel outside
    policy undoing a release) is not one: it stays at its own time, as the release it undoes does."""
    late = {}  # entry id: (booking id, its lot's expiry)
    for entry in ledger:
        expiry = expired.get(entry.grant_id or entry.id)
        if entry.entry_type == LedgerEntryType.CONSUME and entry.booking_id and expiry and entry.created_at > expiry \
                and entry.idempotency_key == Keys.consume(entry.booking_id):
            late[entry.id] = (entry.booking_id, expiry)
    if not late:
        return {}
    booked = dict(session.execute(select(Booking.id, Booking.booked_at)
                                  .where(Booking.id.in_({booking for booking, _ in late.values()}))).all())
    return {entry_id: booked[booking] for entry_id, (booking, expiry) in late.items()
            if booked.get(booking) is not None and booked[booking] < expiry}


def credit_statement(*, session: Session, student_id: str, now: datetime | None = None,
                     name_admins: bool = False) -> dict[str, Any]:
    """`name_admins`: adjustments name the admin who made them (admins' views only; see the module's doc)."""
    now = now or utcnow()
    lines: list[tuple[datetime, int, dict[str, Any]]] = []
    ledger = list(session.scalars(select(CreditLedgerEntry).where(CreditLedgerEntry.student_id == student_id)
                                  .order_by(CreditLedgerEntry.created_at, CreditLedgerEntry.id)))
    names = Names(session, name_admins=name_admins)
    names.prefetch(ledger)
    expired = {lot.grant.id: lot.grant.expires_at for lot in credits.lots(session=session, student_id=student_id)
               if lot.grant.expires_at is not None and lot.grant.expires_at <= now}
    held_at_expiry = dict.fromkeys(expired, 0)
    spent_at = _booked_before_expiry(session, ledger, expired)
    for entry in ledger:
        lot = entry.grant_id or entry.id
        at = spent_at.get(entry.id, entry.created_at)
        counted = lot not in expired or at <= expired[lot]
        if lot in expired and counted:
            held_at_expiry[lot] += entry.quantity
        lines.append((at, entry.id, {
            "id": entry.id, "at": at, "kind": entry.credit_type.value,
            "entry_type": entry.entry_type.value, "quantity": entry.quantity, "cause": entry.cause,
            "lot": lot, "expires_at": entry.expires_at, "counted": counted,
            "description": describe(session, entry, names) + ("" if counted else " (its lot had expired: no change)")}))
    kinds = {entry.id: entry.credit_type.value for entry in ledger if entry.grant_id is None}
    for lot, expires in expired.items():
        left = held_at_expiry[lot]
        if left > 0:
            kind = kinds[lot]
            lines.append((expires, lot, {
                "id": None, "at": expires, "kind": kind, "entry_type": "expire", "quantity": -left,
                "cause": f"expiry:{lot}", "lot": lot, "expires_at": expires, "counted": True,
                "description": f"{left} {kind} credit{'s' if left != 1 else ''} of lot {lot} expired unused"}))
    lines.sort(key=lambda line: (line[0], line[2]["id"] is None, line[1]))  # an expiry after the entries of its time
    balances = {t.value: 0 for t in CreditType}
    entries = []
    for _, _, line in lines:
        if line["counted"]:
            balances[line["kind"]] += line["quantity"]
        entries.append({**line, "at": line["at"].isoformat(),
                        "expires_at": line["expires_at"].isoformat() if line["expires_at"] else None,
                        "balance": balances[line["kind"]], "balances": dict(balances)})
    return {"student_id": student_id, "entries": entries, "balances": balances}
