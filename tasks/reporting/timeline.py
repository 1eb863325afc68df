"""The timeline an admin reads on an enrollment's and a student's page: what happened, oldest first,
in words, filterable by kind.

Rows come from the transition log, the inbox, the outbox, the credit ledger and the audit log, and are
made readable on the way:
- a progress move names its step's label (`SFZ-2: booked → completed`), not the progress row's id;
- a message is one row (its final state, attempts and the time of its last move), however many
  delivery moves it took; the outbox's own transitions are not shown one by one;
- every row has a kind (`KINDS`) the page filters on.

Read-only; taking `*, session`; never commits.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import (
    AuditEntry,
    Booking,
    CourseProgram,
    CourseStep,
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    PackagePurchase,
    StudentCourseEnrollment,
    StudentCourseProgress,
    TransitionLog,
)
from tasks.errors import ValidationFailed
from tasks.machines import OUTBOX
from tasks.reporting import statement

TIMELINE_LIMIT = 500  # rows of each source, the newest: an older history is cut, never the latest

# the filter's choices, in the order the page shows them
KINDS = {
    "payment": "purchase and payment",
    "progress": "progress",
    "booking": "bookings",
    "credit": "credits",
    "message": "messages",
    "admin": "admin actions",
    "profile": "profile",
}

# which kind a logged transition belongs to; outbox moves fold into their message's row, and inbox
# rows are not logged move by move
TRANSITION_KIND = {
    "enrollment": "payment",
    "refund": "payment",
    "dispute": "payment",
    "package_purchase": "payment",
    "progress": "progress",
    "booking": "booking",
}


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # one of KINDS
    what: str
    detail: str = ""
    ref: dict[str, Any] = field(default_factory=dict)


def parse_kinds(values: Iterable[str]) -> frozenset[str] | None:
    """The `kind` filter of a request: None (everything) when empty; an unknown kind is refused."""
    chosen = frozenset(v.strip() for v in values if v and v.strip())
    unknown = sorted(chosen - KINDS.keys())
    if unknown:
        raise ValidationFailed(f"kind: unknown {', '.join(unknown)} (one of {', '.join(KINDS)})", field="kind")
    return chosen or None


# --------------------------------------------------------------------------- pieces


def _newest(rows) -> list:
    """Rows read newest first (`limit` of them: the latest are never the ones cut), put back oldest first."""
    return list(rows)[::-1]


def _transitions(session: Session, where, labels: dict[str, str], limit: int) -> list[TimelineEntry]:
    rows = _newest(session.scalars(
        select(TransitionLog).where(where, TransitionLog.entity.in_(TRANSITION_KIND))
        .order_by(TransitionLog.id.desc()).limit(limit)))
    out = []
    for t in rows:
        if t.entity == "progress":
            subject = labels.get(t.entity_id, f"step (progress {t.entity_id})")
        elif t.entity == "enrollment":
            subject = f"enrollment {t.entity_id}"
        else:
            subject = f"{t.entity.replace('_', ' ')} {t.entity_id}"
        out.append(TimelineEntry(t.at, TRANSITION_KIND[t.entity], f"{subject}: {t.from_status or '∅'} → {t.to_status}",
                                 cause_in_words(t.cause), {"entity": t.entity, "entity_id": t.entity_id,
                                                           "enrollment_id": t.enrollment_id, "cause": t.cause}))
    return out


def _step_labels(session: Session, enrollment_ids: list[int]) -> dict[str, str]:
    """{progress row id (as the log stores it): step label} for these enrollments."""
    if not enrollment_ids:
        return {}
    return {str(pid): label for pid, label in session.execute(
        select(StudentCourseProgress.id, CourseStep.label)
        .join(CourseStep, CourseStep.id == StudentCourseProgress.step_id)
        .where(StudentCourseProgress.enrollment_id.in_(enrollment_ids)))}


def _causes_of(event: InboxEvent) -> tuple[str, ...]:
    """The causes the moves an event made are logged under (`booking.created:bk_1`, `checkout:cs_1`,
    `refund:re_1`, `dispute:dp_1`)."""
    data = (event.payload or {}).get("data") or {}
    if event.source.value == "platform":
        return (f"{event.type}:{data['booking_id']}",) if data.get("booking_id") else ()
    obj = data.get("object") if isinstance(data.get("object"), dict) else {}
    if event.type.startswith("checkout.session."):
        return (f"checkout:{obj.get('id')}",)
    if event.type.startswith("refund."):
        return (f"refund:{obj.get('id')}",)
    if event.type.startswith("charge.dispute."):
        return (f"dispute:{obj.get('id')}", f"dispute:{obj.get('id')}:closed")
    if event.type == "charge.refunded":
        refunds = (obj.get("refunds") or {}).get("data") if isinstance(obj.get("refunds"), dict) else None
        return tuple(f"refund:{r['id']}" for r in refunds or () if isinstance(r, dict) and r.get("id"))
    return ()


# the causes the log writes, in words: (prefix, words); the rest of the cause follows the words
CAUSE_WORDS = (
    ("booking.created:", "booking made: "),
    ("booking.cancelled:", "booking cancelled: "),
    ("attendance.marked:", "attendance marked: "),
    ("checkout:", "checkout "),
    ("refund:", "refund "),
    ("dispute:", "dispute "),
    ("admin:", "admin action #"),
)


def cause_in_words(cause: str | None) -> str:
    for prefix, words in CAUSE_WORDS:
        if cause and cause.startswith(prefix):
            return words + cause[len(prefix):].replace(":closed", " closed")
    return cause or ""


def _event_kind(event: InboxEvent) -> str:
    if event.source.value == "stripe":
        return "payment"
    return "profile" if event.type == "student.upserted" else "booking"


def _events(events: Iterable[InboxEvent], enrollment_id: int | None = None) -> list[TimelineEntry]:
    return [TimelineEntry(
        e.received_at, _event_kind(e),
        f"{e.source.value} {e.type} ({e.status.value})", e.last_error or e.event_id,
        {"inbox_id": e.id, "event_id": e.event_id, "status": e.status.value, "enrollment_id": enrollment_id,
         "causes": _causes_of(e)},
    ) for e in events]


def _messages(session: Session, where, limit: int) -> list[TimelineEntry]:
    """One row per message: created when written, saying its final state, attempts and last move."""
    messages = _newest(session.scalars(select(OutboxMessage).where(where).order_by(OutboxMessage.id.desc()).limit(limit)))
    if not messages:
        return []
    last_moves = dict(session.execute(
        select(TransitionLog.entity_id, func.max(TransitionLog.at))
        .where(TransitionLog.entity == OUTBOX.entity, TransitionLog.entity_id.in_([str(m.id) for m in messages]))
        .group_by(TransitionLog.entity_id)).all())
    out = []
    for m in messages:
        last = last_moves.get(str(m.id)) or m.sent_at or m.created_at
        to = m.recipient if m.channel.value == "email" and m.recipient else ""
        tries = f"{m.attempts} attempt(s), last {last:%Y-%m-%d %H:%M:%S}" if m.attempts else "not sent yet"
        detail = tries + (f" · {m.last_error}" if m.last_error else "")
        out.append(TimelineEntry(
            m.created_at, "message", f"{m.channel.value} {m.topic}{' to ' + to if to else ''}: {m.status.value}",
            detail,
            {"outbox_id": m.id, "status": m.status.value, "attempts": m.attempts, "last_at": last,
             "enrollment_id": m.enrollment_id},
        ))
    return out


def _credits(session: Session, where, limit: int) -> list[TimelineEntry]:
    entries = _newest(session.scalars(select(CreditLedgerEntry).where(where).order_by(CreditLedgerEntry.id.desc())
                                      .limit(limit)))
    names = statement.Names(session, name_admins=True)  # the timelines are the admins' pages
    names.prefetch(entries)  # what the descriptions name, a query a kind
    return [TimelineEntry(
        c.created_at, "credit", f"{c.entry_type.value} {c.quantity:+d} {c.credit_type.value}",
        statement.describe(session, c, names), {"ledger_id": c.id, "enrollment_id": c.enrollment_id},
    ) for c in entries]


def _admin(session: Session, targets: list[str], limit: int) -> list[TimelineEntry]:
    return [TimelineEntry(
        a.at, "admin", f"{a.action} by {a.actor}", a.reason or "", {"audit_id": a.id, "target": a.target},
    ) for a in _newest(session.scalars(select(AuditEntry).where(AuditEntry.target.in_(targets))
                                       .order_by(AuditEntry.id.desc()).limit(limit)))]


def _payment_subjects(*purchases) -> set[str]:
    subjects = set()
    for purchase in purchases:
        subjects.add(f"payment:{purchase.stripe_checkout_session_id}")
        if purchase.stripe_payment_intent_id:
            subjects.add(f"payment:{purchase.stripe_payment_intent_id}")
    return subjects


def events_about(session: Session, enrollment: StudentCourseEnrollment, limit: int) -> list[InboxEvent]:
    """The inbox events about an enrollment's payment and its bookings."""
    booking_ids = list(session.scalars(select(Booking.id).where(Booking.enrollment_id == enrollment.id)))
    subjects = _payment_subjects(enrollment) | {f"booking:{b}" for b in booking_ids}
    events = _newest(session.scalars(
        select(InboxEvent).where(InboxEvent.subject.in_(sorted(subjects))).order_by(InboxEvent.id.desc()).limit(limit)))
    if booking_ids:  # booking.created is keyed on the student; keep the ones naming this enrollment's bookings
        wanted = set(booking_ids)
        events += [e for e in _newest(session.scalars(
            select(InboxEvent).where(InboxEvent.subject == f"student:{enrollment.student_id}",
                                     InboxEvent.type == "booking.created").order_by(InboxEvent.id.desc()).limit(limit)))
            if ((e.payload or {}).get("data") or {}).get("booking_id") in wanted]
    return events


def _fold(entries: list[TimelineEntry]) -> list[TimelineEntry]:
    """One row per thing that happened: a booking's move beside its step's move under the same cause is
    said once, on the step's row; a processed event becomes the link on the first move it made (the move
    says what it did). Events that did not apply (failed, waiting, ignored) keep their row."""
    moves = [e for e in entries if "entity" in e.ref]
    step_causes = {m.ref["cause"] for m in moves if m.ref["entity"] == "progress"}
    kept = [e for e in entries
            if not (e.ref.get("entity") == "booking" and e.ref["cause"] and e.ref["cause"] in step_causes)]
    first_move: dict[str, TimelineEntry] = {}
    for move in kept:
        if "entity" in move.ref and move.ref["cause"]:
            first_move.setdefault(move.ref["cause"], move)
    linked: dict[int, TimelineEntry] = {}
    out = []
    for entry in kept:
        if "inbox_id" in entry.ref and entry.ref["status"] == "processed":
            made = [first_move[c] for c in entry.ref["causes"] if c in first_move]
            if made and id(made[0]) not in linked:
                linked[id(made[0])] = entry
                continue
        out.append(entry)
    return [_linked(e, linked[id(e)]) if id(e) in linked else e for e in out]


def _linked(move: TimelineEntry, event: TimelineEntry) -> TimelineEntry:
    return TimelineEntry(move.at, move.kind, move.what, f"{move.detail} · {event.what}",
                         {**move.ref, "inbox_id": event.ref["inbox_id"], "event_id": event.ref["event_id"]})


def _finish(entries: list[TimelineEntry], kinds: frozenset[str] | None) -> list[TimelineEntry]:
    entries = _fold(entries)
    if kinds:
        entries = [e for e in entries if e.kind in kinds]
    order = list(KINDS)
    return sorted(entries, key=lambda e: (e.at, order.index(e.kind)))


# --------------------------------------------------------------------------- the two timelines


def enrollment_timeline(*, session: Session, enrollment_id: int, kinds: frozenset[str] | None = None,
                        limit: int = TIMELINE_LIMIT) -> list[TimelineEntry]:
    """Everything that touched one enrollment, oldest first (only `kinds`, when given): its payment's,
    steps', bookings' and refunds' moves, the inbox events about its payment and bookings, one row per
    message it sent, its bundle's ledger entries and the admin actions on it."""
    enrollment = session.get(StudentCourseEnrollment, enrollment_id)
    if enrollment is None:
        return []
    labels = _step_labels(session, [enrollment_id])
    entries = _transitions(session, TransitionLog.enrollment_id == enrollment_id, labels, limit)
    entries += _events(events_about(session, enrollment, limit), enrollment_id)
    entries += _messages(session, OutboxMessage.enrollment_id == enrollment_id, limit)
    entries += _credits(session, CreditLedgerEntry.enrollment_id == enrollment_id, limit)
    entries += _admin(session, [f"enrollment:{enrollment_id}"], limit)
    return _finish(entries, kinds)


def student_timeline(*, session: Session, student_id: str, kinds: frozenset[str] | None = None,
                     limit: int = TIMELINE_LIMIT) -> list[TimelineEntry]:
    """A student's whole story: every enrollment's timeline (rows carry `ref["enrollment_id"]`), their
    package purchases and the events about them, credits outside any enrollment, the events about the
    student themselves, and the admin actions on the student."""
    enrollments = list(session.scalars(select(StudentCourseEnrollment)
                                       .where(StudentCourseEnrollment.student_id == student_id)))
    ids = [e.id for e in enrollments]
    purchases = list(session.scalars(select(PackagePurchase).where(PackagePurchase.student_id == student_id)))
    labels = _step_labels(session, ids)
    codes = dict(session.execute(select(StudentCourseEnrollment.id, CourseProgram.code)
                                 .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
                                 .where(StudentCourseEnrollment.id.in_(ids))).all()) if ids else {}

    entries: list[TimelineEntry] = []
    if ids:
        entries += _transitions(session, TransitionLog.enrollment_id.in_(ids), labels, limit)
    if purchases:
        entries += _transitions(session, (TransitionLog.entity == "package_purchase")
                                & TransitionLog.entity_id.in_([str(p.id) for p in purchases]), labels, limit)
    seen: set[int] = set()
    for enrollment in enrollments:
        for row in _events(events_about(session, enrollment, limit), enrollment.id):
            if row.ref["inbox_id"] not in seen:
                seen.add(row.ref["inbox_id"])
                entries.append(row)
    own = _payment_subjects(*purchases) | {f"student:{student_id}"}
    entries += [row for row in _events(_newest(session.scalars(
        select(InboxEvent).where(InboxEvent.subject.in_(sorted(own))).order_by(InboxEvent.id.desc()).limit(limit))))
        if row.ref["inbox_id"] not in seen]
    if ids:
        entries += _messages(session, OutboxMessage.enrollment_id.in_(ids), limit)
    entries += _credits(session, CreditLedgerEntry.student_id == student_id, limit)
    entries += _admin(session, [f"student:{student_id}"] + [f"enrollment:{i}" for i in ids], limit)
    entries = [_with_course(e, codes) for e in entries]
    return _finish(entries, kinds)


def _with_course(entry: TimelineEntry, codes: dict[int, str]) -> TimelineEntry:
    """A row of one of the student's enrollments carries its course code (the page's enrollment column)."""
    code = codes.get(entry.ref.get("enrollment_id"))
    if code is None:
        return entry
    return TimelineEntry(entry.at, entry.kind, entry.what, entry.detail, {**entry.ref, "course_code": code})


def event_timeline(*, session: Session, inbox_id: int, limit: int = TIMELINE_LIMIT) -> list[TimelineEntry]:
    """What one event did: the moves logged under its cause (a step booked, an enrollment activated, a
    refund recorded), oldest first; empty for an event that moved nothing (or whose payload was pruned)."""
    event = session.get(InboxEvent, inbox_id)
    causes = _causes_of(event) if event is not None else ()
    if not causes:
        return []
    # delivery moves never carry an event's cause; leaving them out lets the cause index answer
    where = TransitionLog.cause.in_(causes) & (TransitionLog.entity != OUTBOX.entity)
    enrollment_ids = [i for i in session.scalars(select(TransitionLog.enrollment_id).where(where).distinct())
                      if i is not None]
    return _transitions(session, where, _step_labels(session, enrollment_ids), limit)
