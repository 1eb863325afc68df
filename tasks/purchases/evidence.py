"""Dispute evidence: drafted from what we know of the purchase, submitted to Stripe by an admin.

`draft` reads the enrollment (or package purchase), its bookings and attendance and the mails sent to
the student, and writes the evidence Stripe accepts for a dispute:

- `service_date` — the first attended class, else the day access began;
- `access_activity_log` — the purchase, then every booking, cancellation and attendance, timestamped;
- `customer_communication` — every mail sent to the student, with its Message-ID (a document: sent as
  a PDF file, Stripe's only text-bearing format for it);
- `receipt` — what was bought, when, and the amounts Stripe charged (a PDF file too);
- `uncategorized_text` — the enrollment in a paragraph: what was sold, used and attended;
- `customer_name`, `customer_email_address`, `product_description`.

Submitting is intent → Stripe call → outcome, each step apart: `begin_submission` (one transaction:
the draft is frozen on the dispute row with a fresh idempotency key, status `submitting`), the caller's
`send` (no transaction: the two documents uploaded, then the dispute updated with `submit=true`), and
`record_submission` (one transaction: `submitted`, or `failed` with Stripe's answer, which an admin can
submit again).

Stripe takes a dispute's evidence once. `send` first reads the dispute: evidence already submitted (by an
attempt whose answer was lost when its process died, or by hand in Stripe's Dashboard) is recorded
`submitted` as Stripe holds it, and nothing is uploaded or sent again.
"""
from __future__ import annotations

import io
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from db.enums import DisputeStatus, LedgerEntryType, OutboxChannel, OutboxStatus, ProgressStatus
from db.models import (
    Booking,
    CourseProgram,
    CourseStep,
    CreditLedgerEntry,
    CreditPackage,
    GroupClass,
    OutboxMessage,
    PackagePurchase,
    PaymentDispute,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.types import utcnow
from tasks.errors import NotFound, TaskError
from tasks.messaging import delivery, mail
from tasks.messaging.outbox import ADMIN_TEMPLATES, booking_mails
from tasks.purchases.evidence_pdf import text_pdf
from tasks.stripe_api import outcome_unknown

TEXT_FIELDS = ("service_date", "access_activity_log", "uncategorized_text", "customer_name",
               "customer_email_address", "product_description")
FILE_FIELDS = ("customer_communication", "receipt")  # Stripe takes these as uploaded files
FIELDS = TEXT_FIELDS + FILE_FIELDS
DRAFT, SUBMITTING, SUBMITTED, FAILED = "draft", "submitting", "submitted", "failed"
SUBMITTING_LEASE = timedelta(minutes=5)  # a submission that crashed mid-way may be started again after this
HELD_AT_STRIPE = "(as held at Stripe)"
ERASED = "[erased]"  # what a student's erasure leaves in submitted evidence for their name and addresses
TEXT_LIMIT = 20_000  # characters a text field keeps (Stripe allows 150,000 across all of them)
# where a draft names the customer's address: the receipt's student line and each mail's recipient (see `draft`
# and `_communication`); an erasure replaces what stands there, whichever address it was
ADDRESS_PLACES = {
    "receipt": re.compile(r"^(Student: .*? <).*(>)$", re.MULTILINE),
    "customer_communication": re.compile(r"^(.*?  Message-ID \S+  to ).*?(  \".*)$", re.MULTILINE),
}


class EvidenceError(TaskError):
    """Raised when evidence cannot be submitted now; `code` says why (closed, in_progress)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _when(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _money(amount: int | None, currency: str | None) -> str:
    return mail.money(amount or 0, currency)


@dataclass
class _Purchase:
    kind: str
    row: Any
    student: Student | None
    title: str
    code: str
    program: CourseProgram | None = None
    package: CreditPackage | None = None
    lines: list[tuple[datetime, str]] = field(default_factory=list)


def _purchase_of(session: Session, dispute: PaymentDispute) -> _Purchase:
    enrollment = session.get(StudentCourseEnrollment, dispute.enrollment_id) if dispute.enrollment_id else None
    if enrollment is not None:
        program = session.get(CourseProgram, enrollment.program_id)
        return _Purchase("course", enrollment, session.get(Student, enrollment.student_id), program.title, program.code,
                         program=program)
    package_purchase = session.scalar(select(PackagePurchase).where(
        PackagePurchase.stripe_payment_intent_id == dispute.stripe_payment_intent_id).limit(1))
    if package_purchase is None:
        raise NotFound(f"dispute {dispute.stripe_dispute_id} has no purchase of ours")
    package = session.get(CreditPackage, package_purchase.package_id)
    return _Purchase("package", package_purchase, session.get(Student, package_purchase.student_id), package.title,
                     package.code, package=package)


def _activity(session: Session, purchase: _Purchase) -> tuple[list[str], datetime | None, dict[str, int]]:
    """The access log lines, the first attended class's start, and the counts the summary names: a course's steps
    by status, or a package's bookings whose credit stays spent (`credits_used`)."""
    row = purchase.row
    events: list[tuple[datetime, str]] = [(row.created_at, (
        f"purchase: checkout session {row.stripe_checkout_session_id} ({purchase.kind} {purchase.code} "
        f"\"{purchase.title}\") paid by student {row.student_id}"))]
    if purchase.kind == "course" and row.activated_at:
        events.append((row.activated_at, f"access granted: enrollment {row.id} active"))
    if purchase.kind == "course":
        bookings = session.scalars(select(Booking).where(Booking.enrollment_id == row.id))
    else:  # the bookings that spent a credit of this purchase, as its ledger says (another lot may have served one)
        bookings = session.scalars(select(Booking).where(Booking.id.in_(select(CreditLedgerEntry.booking_id).where(
            CreditLedgerEntry.package_purchase_id == row.id, CreditLedgerEntry.entry_type == LedgerEntryType.CONSUME))))
    first_attended = None
    for booking in sorted(bookings, key=lambda b: (b.booked_at or b.created_at, b.id)):
        group_class = session.get(GroupClass, booking.class_id)
        step = session.get(CourseStep, booking.course_step_id) if booking.course_step_id else None
        what = (f"class {booking.class_id}" + (f" \"{group_class.title}\"" if group_class and group_class.title else "")
                + (f" starting {_when(group_class.starts_at)}" if group_class else "")
                + (f" for step {step.label}" if step else "") + f" (booking {booking.id})")
        events.append((booking.booked_at or booking.created_at, f"booked {what}"))
        if booking.cancelled_at:
            events.append((booking.cancelled_at, f"cancelled booking {booking.id}"
                           + (" within the cancellation policy" if booking.within_policy else "")))
        if booking.attendance_marked_at:
            attended = None
            if step is not None:
                progress = session.scalar(select(StudentCourseProgress).where(
                    StudentCourseProgress.enrollment_id == row.id, StudentCourseProgress.step_id == step.id))
                attended = progress is not None and progress.status == ProgressStatus.COMPLETED
            outcome = {True: "attended", False: "did not attend", None: "attendance marked"}[attended]
            events.append((booking.attendance_marked_at, f"{outcome}: {what}"))
            if attended and group_class and (first_attended is None or group_class.starts_at < first_attended):
                first_attended = group_class.starts_at
    counts = {}
    if purchase.kind == "course":
        for status in session.scalars(select(StudentCourseProgress.status).where(
                StudentCourseProgress.enrollment_id == row.id)):
            counts[status.value] = counts.get(status.value, 0) + 1
    else:  # the bookings whose credit of this purchase stays spent (what each consumed, less what came back)
        counts["credits_used"] = sum(1 for (spent,) in session.execute(
            select(func.sum(CreditLedgerEntry.quantity)).where(
                CreditLedgerEntry.package_purchase_id == row.id, CreditLedgerEntry.booking_id.is_not(None),
                CreditLedgerEntry.entry_type.in_((LedgerEntryType.CONSUME, LedgerEntryType.RELEASE)))
            .group_by(CreditLedgerEntry.booking_id)) if spent < 0)
    events.sort(key=lambda e: e[0])
    return [f"{_when(at)}  {text}" for at, text in events], first_attended, counts


def _communication(session: Session, purchase: _Purchase) -> list[str]:
    """Every mail sent to the student (by enrollment, by booking or by address), oldest first, with its
    Message-ID."""
    row, student = purchase.row, purchase.student
    if purchase.kind == "course":
        where = [OutboxMessage.enrollment_id == row.id]
    else:  # as by address, the student's booking mails (no enrollment: found by their key once the address is gone)
        where = booking_mails(session.scalars(select(Booking.id).where(Booking.student_id == row.student_id)))
    if student is not None and student.email:
        where.append(OutboxMessage.recipient == student.email)
    if not where:
        return []
    # a mail whose address was erased (or pruned by retention) still counts: its Message-ID, topic and time stay
    messages = session.scalars(select(OutboxMessage).where(
        OutboxMessage.channel == OutboxChannel.MAIL, OutboxMessage.status == OutboxStatus.SENT,
        or_(OutboxMessage.recipient.is_(None), OutboxMessage.recipient.not_like("@%")),
        OutboxMessage.topic.not_in(ADMIN_TEMPLATES), or_(*where))
        .order_by(OutboxMessage.sent_at, OutboxMessage.id))
    lines = []  # the recipient's place is ADDRESS_PLACES["customer_communication"]
    for message in messages:
        try:
            subject = mail.render(message.topic, (message.payload or {}).get("context")).subject
        except Exception:  # a template renamed since: the topic still says what it was
            subject = message.topic
        lines.append(f"{_when(message.sent_at)}  Message-ID {delivery.mail_message_id(message.public_id)}  to "
                     f"{message.recipient or '(address erased)'}  \"{subject}\" ({message.topic})")
    return lines


def draft(*, session: Session, dispute: PaymentDispute) -> dict[str, str]:
    """The evidence for `dispute` from what is recorded now (reads only)."""
    purchase = _purchase_of(session, dispute)
    row, student = purchase.row, purchase.student
    log, first_attended, counts = _activity(session, purchase)
    mails = _communication(session, purchase)
    began = first_attended or getattr(row, "activated_at", None) or row.created_at
    charged = _money(row.amount_total, row.currency)
    receipt = "\n".join([
        f"Receipt for checkout session {row.stripe_checkout_session_id}"
        + (f" (payment {row.stripe_payment_intent_id})" if row.stripe_payment_intent_id else ""),
        f"Date: {_when(row.created_at)}",
        f"Student: {row.student_id}" + (f" <{student.email}>" if student and student.email else ""),  # ADDRESS_PLACES
        f"Item: {purchase.kind} {purchase.code} \"{purchase.title}\"",
        f"Subtotal: {_money(row.amount_subtotal if row.amount_subtotal is not None else row.amount_total, row.currency)}",
        f"Discount: {_money(row.amount_discount, row.currency)}",
        f"Tax: {_money(row.amount_tax, row.currency)}",
        f"Total charged: {charged}",
    ])
    if purchase.kind == "course":
        used = (f"Of its {sum(counts.values())} steps, {counts.get('completed', 0)} were attended, "
                f"{counts.get('booked', 0)} are booked and {counts.get('missed', 0)} were missed.")
        product = f"Course program {purchase.code} \"{purchase.title}\": group classes in {sum(counts.values())} steps"
    else:
        used = f"The package's credits were used for {counts['credits_used']} booking(s)."
        product = f"Credit package {purchase.code} \"{purchase.title}\""
    summary = (
        f"The customer (student {row.student_id}) bought {product} on {_when(row.created_at)} for {charged} "
        f"(checkout session {row.stripe_checkout_session_id}). Access began {_when(began)}. {used} "
        f"The access activity log lists every booking and attendance since the purchase; {len(mails)} mail(s) "
        f"were sent to the customer (customer communication, with their Message-IDs)."
    )
    return {
        "service_date": began.astimezone(timezone.utc).strftime("%Y-%m-%d"),
        "access_activity_log": "\n".join(log)[:TEXT_LIMIT],
        "customer_communication": "\n".join(mails) or "No mail was sent to the customer.",
        "receipt": receipt,
        "uncategorized_text": summary[:TEXT_LIMIT],
        "customer_name": (student.name if student and student.name else "") or "",
        "customer_email_address": (student.email if student and student.email else "") or "",
        "product_description": product,
    }


def erase_person(row: PaymentDispute, words: set[str]) -> None:
    """A student's erasure: evidence not sent yet is dropped (drafted again, from what is left, when shown);
    evidence sent keeps the record of what the bank was told, with the customer's name and addresses replaced
    by ERASED: wherever the draft put them (ADDRESS_PLACES: an address they have since changed, one no mail on
    record names any more, too), and each of `words` anywhere (text Stripe held, written by hand). The documents
    uploaded to Stripe are Stripe's to keep."""
    if row.evidence_status not in (SUBMITTING, SUBMITTED):
        row.evidence = None
        return
    words = sorted((w for w in words if w), key=len, reverse=True)  # a longer one first: an address holds a name
    redacted = {}
    for name, text in (row.evidence or {}).items():
        if name in ("customer_name", "customer_email_address") and text:
            redacted[name] = ERASED
            continue
        if isinstance(text, str):
            if name in ADDRESS_PLACES:
                text = ADDRESS_PLACES[name].sub(lambda place: f"{place[1]}{ERASED}{place[2]}", text)
            for word in words:  # whole words only: a short name must not cut into other words
                text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", ERASED, text, flags=re.IGNORECASE)
        redacted[name] = text
    row.evidence = redacted


def dispute_row(session: Session, stripe_dispute_id: str, *, lock: bool = False) -> PaymentDispute:
    query = select(PaymentDispute).where(PaymentDispute.stripe_dispute_id == stripe_dispute_id)
    row = session.scalar(query.with_for_update() if lock else query)
    if row is None:
        raise NotFound(f"no dispute {stripe_dispute_id}")
    return row


def view(*, session: Session, stripe_dispute_id: str) -> dict[str, Any]:
    """What `GET /admin/disputes/<id>/evidence` answers: the evidence (a fresh draft until it is submitted,
    then what was sent), its deadline and its submission's state."""
    row = dispute_row(session, stripe_dispute_id)
    sent = row.evidence_status in (SUBMITTING, SUBMITTED)
    evidence = row.evidence if sent and row.evidence else draft(session=session, dispute=row)
    return {
        "dispute_id": row.stripe_dispute_id, "status": row.status.value, "stripe_status": row.stripe_status,
        "amount": row.amount, "currency": row.currency, "reason": row.reason,
        "enrollment_id": row.enrollment_id, "payment_intent": row.stripe_payment_intent_id,
        "evidence_due_by": row.evidence_due_by.isoformat() if row.evidence_due_by else None,
        "evidence_status": row.evidence_status or DRAFT, "evidence": evidence,
        "files": row.evidence_files or {}, "submitted_at": row.evidence_submitted_at.isoformat()
        if row.evidence_submitted_at else None, "error": row.evidence_error,
    }


def record_opened(*, session: Session, row: PaymentDispute, dispute: dict[str, Any]) -> None:
    """On `charge.dispute.created`: Stripe's status, currency and deadline, and a first draft."""
    due = (dispute.get("evidence_details") or {}).get("due_by")
    if isinstance(due, int) and not isinstance(due, bool):
        row.evidence_due_by = datetime.fromtimestamp(due, timezone.utc)
    row.currency = row.currency or dispute.get("currency")
    row.stripe_status = dispute.get("status") or row.stripe_status
    if row.evidence_status in (None, DRAFT):
        row.evidence = draft(session=session, dispute=row)
        row.evidence_status = DRAFT


@dataclass(frozen=True)
class Submission:
    """A submission's intent, as plain values for the call made outside any transaction."""

    dispute_id: str
    key: str
    evidence: dict[str, str]


def begin_submission(*, session: Session, stripe_dispute_id: str, now: datetime | None = None) -> Submission:
    """The intent: freeze a fresh draft on the row with a new idempotency key; status `submitting`."""
    now = now or utcnow()
    row = dispute_row(session, stripe_dispute_id, lock=True)
    if row.status != DisputeStatus.OPEN:
        raise EvidenceError("dispute_closed", f"dispute {stripe_dispute_id} is {row.status.value}: nothing to answer")
    if row.evidence_status == SUBMITTING and row.evidence_requested_at and now - row.evidence_requested_at < SUBMITTING_LEASE:
        raise EvidenceError("submission_in_progress", f"dispute {stripe_dispute_id}: a submission is in progress")
    evidence = draft(session=session, dispute=row)
    row.evidence, row.evidence_status, row.evidence_error = evidence, SUBMITTING, None
    row.evidence_submission_key = f"dispute-evidence:{stripe_dispute_id}:{uuid.uuid4().hex}"
    row.evidence_requested_at = now
    return Submission(row.stripe_dispute_id, row.evidence_submission_key, dict(evidence))


@dataclass
class Sent:
    ok: bool
    files: dict[str, str] = field(default_factory=dict)
    stripe_status: str | None = None
    error: str | None = None
    held: dict[str, str] | None = None  # the text Stripe already held, submitted before this submission
    unknown: bool = False  # not refused: `outcome_unknown` (submitting again is safe)


def send(client, submission: Submission) -> Sent:
    """The Stripe calls (no transaction): the documents uploaded as PDF files, then the dispute updated and
    submitted. Every call carries an Idempotency-Key derived from the submission's."""
    import stripe

    sent = Sent(ok=False)
    try:
        dispute = client.v1.disputes.retrieve(submission.dispute_id).to_dict()
        if _submitted_before(dispute):
            held = dispute.get("evidence") or {}
            sent.ok, sent.stripe_status = True, dispute.get("status")
            sent.held = {name: held[name] for name in TEXT_FIELDS if isinstance(held.get(name), str)}
            sent.files = {name: _file_id(held[name]) for name in FILE_FIELDS if held.get(name)}
            return sent
        for name in FILE_FIELDS:
            document = text_pdf(f"{name.replace('_', ' ').capitalize()} - dispute {submission.dispute_id}",
                                submission.evidence[name])
            upload = io.BytesIO(document)
            upload.name = f"{submission.dispute_id}-{name}.pdf"
            created = client.v1.files.create(params={"purpose": "dispute_evidence", "file": upload},
                                             options={"idempotency_key": f"{submission.key}:{name}"})
            sent.files[name] = created.id
        evidence = {name: submission.evidence[name] for name in TEXT_FIELDS if submission.evidence.get(name)}
        evidence.update(sent.files)
        dispute = client.v1.disputes.update(submission.dispute_id, params={"evidence": evidence, "submit": True},
                                            options={"idempotency_key": f"{submission.key}:submit"})
        sent.ok, sent.stripe_status = True, dispute.status
    except stripe.StripeError as exc:
        sent.error = f"{type(exc).__name__}: {exc.user_message or exc}"
        sent.unknown = outcome_unknown(exc)
    return sent


def _submitted_before(dispute) -> bool:
    count = (dispute.get("evidence_details") or {}).get("submission_count")
    return isinstance(count, int) and not isinstance(count, bool) and count > 0


def _file_id(value: Any) -> str:
    return value if isinstance(value, str) else value.get("id")  # an id, or the file expanded


def record_submission(*, session: Session, submission: Submission, sent: Sent, now: datetime | None = None) -> None:
    """The outcome on the row (only if it is still this submission's): `submitted` or `failed`."""
    row = dispute_row(session, submission.dispute_id, lock=True)
    if row.evidence_submission_key != submission.key:
        return  # a later submission took over
    row.evidence_files = {**(row.evidence_files or {}), **sent.files}
    if sent.ok:
        if sent.held is not None:  # what the bank has, not the draft this submission froze (the customer's
            # name and address as Stripe holds them are not copied here: our own record of them may be erased)
            row.evidence = {**sent.held, **{name: HELD_AT_STRIPE for name in ("customer_name", "customer_email_address")
                                            if sent.held.get(name)},
                            **{name: f"(file {file_id} at Stripe)" for name, file_id in sent.files.items()}}
        row.evidence_status, row.evidence_submitted_at, row.evidence_error = SUBMITTED, now or utcnow(), None
        row.stripe_status = sent.stripe_status or row.stripe_status
    else:
        row.evidence_status, row.evidence_error = FAILED, sent.error


def open_disputes(*, session: Session, limit: int = 50) -> list[PaymentDispute]:
    """Open disputes, the nearest deadline first (the dashboard's list)."""
    return list(session.scalars(select(PaymentDispute).where(PaymentDispute.status == DisputeStatus.OPEN)
                                .order_by(PaymentDispute.evidence_due_by.is_(None), PaymentDispute.evidence_due_by,
                                          PaymentDispute.id).limit(limit)))
