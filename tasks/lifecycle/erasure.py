"""Erasing a student (`coursepipe students erase ID`): personal data removed, financial records kept.

Removed: the mirror's e-mail, name and time zone; every mail to the student (address and body, whatever
its status: unsent ones are never sent; its dedupe key keeps neither the address nor its digest), found by
their enrollments, their bookings (a credit booking's mail has no enrollment) and their address; the raw
payloads of the inbox events about the student (their profile, their bookings, their payments by payment
intent, checkout session or charge, and every checkout that names them or their address, free or failed
ones too: pruned as retention prunes, keeping ids, a hash and the financial facts; an error naming the address
by its digest names it no more); their name and
addresses in dispute evidence (a draft is dropped and drafted again when shown; evidence already sent keeps
what the bank was told, redacted); the Stripe requests their checkouts' Idempotency-Keys keep for a retry (they
carry the address: the keys are forgotten, a retry then makes a new session). Kept, under the platform's student id, which names no one once the
platform has erased its side: enrollments, purchases, refunds, disputes, bookings, the credit ledger, the
transition log; and the admins' alerts (they name ids only, and an unsent one must still reach the admins).
A `student.upserted` that occurred before the erasure (one still in the inbox, or redelivered) is not
applied after it: only a later one is.

An event still to be applied (pending, processing or waiting) keeps its payload until it has been: the
student's own subjects are kept (`ErasedSubject`: not those of checkouts that only carry their address, which
may be another student's purchase), and the next retention run prunes the payload of any event about them
that has been applied or ignored since, one arriving after the erasure (a redelivered checkout, a refund of a
payment on record) too; one that failed stays replayable until it is applied, or pruned by age. A checkout
applied while the student is erased records no e-mail of its own (`Student.erased_at`, read under a key-share
lock, so an erasure and a fulfilment at the same moment are one after the other; a later `student.upserted`
clears it), and keeps its payment as one of their subjects: it and its later events are forgotten once applied.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus, OutboxChannel, OutboxStatus
from db.models import (
    Booking,
    CheckoutKey,
    InboxEvent,
    OutboxMessage,
    PackagePurchase,
    PaymentDispute,
    PaymentRefund,
    Student,
    StudentCourseEnrollment,
)
from db.types import utcnow
from tasks.errors import NotFound
from tasks.inbox.store import keep_erased_subjects
from tasks.lifecycle import retention
from tasks.machines import OUTBOX
from tasks.messaging.outbox import ADMINS, address_digest, booking_mails, scrub_address
from tasks.purchases import evidence
from tasks.purchases.fulfilment import email_reference


# an event still to be applied keeps its payload (it is pruned by retention once applied)
STILL_TO_APPLY = (InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING)
# a checkout's events (its payment's subject also holds the payment's refunds and disputes)
_CHECKOUT = and_(InboxEvent.source == InboxSource.STRIPE, InboxEvent.type.like("checkout.session.%"))


@dataclass
class Erased:
    student_id: str
    mails: int
    events: int
    pending: int = 0  # events about the student still to be applied: pruned by the retention run after they end

    def as_dict(self) -> dict:
        return {"student_id": self.student_id, "mails_erased": self.mails, "events_pruned": self.events,
                "events_still_to_apply": self.pending}


def _payments(session: Session, student_id: str) -> tuple[set[str], set[str]]:
    """The student's payment intents and checkout sessions (enrollments and package purchases)."""
    intents, sessions = set(), set()
    for model in (StudentCourseEnrollment, PackagePurchase):
        for pi, cs in session.execute(select(model.stripe_payment_intent_id, model.stripe_checkout_session_id)
                                      .where(model.student_id == student_id)):
            intents |= {pi} - {None}
            sessions |= {cs} - {None}
    return intents, sessions


def _charges(session: Session, intents: set[str]) -> set[str]:
    """The charges of those payments that a refund or a dispute on record names."""
    if not intents:
        return set()
    charges = set()
    for model in (PaymentRefund, PaymentDispute):
        charges |= set(session.scalars(select(model.stripe_charge_id).where(
            model.stripe_payment_intent_id.in_(intents), model.stripe_charge_id.is_not(None))))
    return charges


def _subjects(session: Session, student_id: str, payments: tuple[set[str], set[str]],
              addresses: set[str]) -> tuple[set[str], set[str]]:
    """The inbox subjects of the student's events, in two sets.

    Their own: themselves, their bookings, their payments (by payment intent, by checkout session for one
    without: a free checkout, and by charge for an event that names no payment intent), and every checkout that
    names them (`client_reference_id` or `metadata.student_id`), whatever became of it (one that failed, for a
    course unknown then, has no purchase to lead to it). And the checkouts that only carry one of their
    addresses: a buyer not placed, or another student's purchase paid with their address (a parent paying for
    a child). Both are pruned now, of the second only its checkout events: the rest of that payment (a refund
    failed and waiting for a replay) is the other student's; only their own are kept for what ends later."""
    intents, sessions = payments
    own = {f"student:{student_id}"}
    own |= {f"booking:{b}" for b in session.scalars(select(Booking.id).where(Booking.student_id == student_id))}
    own |= {f"payment:{ref}" for ref in intents | sessions | _charges(session, intents)}
    checkout = InboxEvent.payload["data"]["object"]

    def checkouts(*named):
        return {subject for subject in session.scalars(select(InboxEvent.subject).where(_CHECKOUT, or_(*named)))
                if subject}

    own |= checkouts(checkout["client_reference_id"].as_string() == student_id,
                     checkout["metadata"]["student_id"].as_string() == student_id)
    carrying = set()
    if addresses:
        # in any case, as a buyer is matched by address (Stripe keeps the case the buyer typed)
        lowered = {address.lower() for address in addresses}
        carrying = checkouts(func.lower(checkout["customer_details"]["email"].as_string()).in_(lowered),
                             func.lower(checkout["customer_email"].as_string()).in_(lowered)) - own
    return own, carrying


def _scrub_references(event: InboxEvent, references: set[str]) -> None:
    """An error that names an erased address by its digest (`fulfilment.email_reference`: a checkout whose buyer
    was not placed) names it no more: the digest would link a known address to the row."""
    for reference in references:
        if event.last_error and reference in event.last_error:
            event.last_error = event.last_error.replace(reference, evidence.ERASED)


def erase_student(*, session: Session, student_id: str) -> Erased:
    student = session.scalar(select(Student).where(Student.id == student_id).with_for_update())
    if student is None:
        raise NotFound(f"no student {student_id}")
    now = utcnow()
    address, name = student.email, student.name
    student.email = student.name = student.timezone = None
    student.erased_at = now
    # an update that occurred before now is older than the erasure: not applied (a later one is)
    if student.source_updated_at is None or student.source_updated_at < now:
        student.source_updated_at = now
    enrollment_ids = []
    for enrollment in session.scalars(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == student_id)):
        enrollment_ids.append(enrollment.id)
        if (enrollment.fulfilment_metadata or {}).get("customer_email"):  # the checkout's e-mail, as recorded
            enrollment.fulfilment_metadata = {**enrollment.fulfilment_metadata, "customer_email": None}
    mail_filter = [OutboxMessage.enrollment_id.in_(enrollment_ids)] if enrollment_ids else []
    # a booking's mail, by its key: a credit booking's has no enrollment, and went to the address of its time
    mail_filter += booking_mails(session.scalars(select(Booking.id).where(Booking.student_id == student_id)))
    if address:  # by address: as sent, or in the key of a mail written before keys held a digest
        mail_filter += [OutboxMessage.recipient == address,
                        OutboxMessage.dedupe_key.endswith(f":{address}", autoescape=True),
                        OutboxMessage.dedupe_key.endswith(f":{address_digest(address)}")]
    mails = 0
    addresses = {address} - {None}
    if mail_filter:
        not_the_admins = or_(OutboxMessage.recipient.is_(None), OutboxMessage.recipient != ADMINS)
        for message in session.scalars(select(OutboxMessage).where(OutboxMessage.channel == OutboxChannel.MAIL,
                                                                   not_the_admins, or_(*mail_filter))):
            addresses |= {message.recipient} - {None}
            if message.status in (OutboxStatus.PENDING, OutboxStatus.SENDING):
                OUTBOX.move(message, OutboxStatus.DEAD, session=session, cause="student erased")
                message.last_error = "student erased: not sent"
            # the address out of the key, its digest too (a mail pruned before by retention included); first, so
            # pruning finds nothing left to rewrite in it
            for sent_to in {message.recipient, address} - {None}:  # the address it went to, and the current one
                scrub_address(session, message, sent_to, erased=True)
            mails += retention.prune_mail(session, message, now=now)
    payments = _payments(session, student_id)
    intents = payments[0]
    disputes = [PaymentDispute.enrollment_id.in_(enrollment_ids)] if enrollment_ids else []
    if intents:
        disputes.append(PaymentDispute.stripe_payment_intent_id.in_(intents))
    if disputes:
        for dispute in session.scalars(select(PaymentDispute).where(or_(*disputes)).with_for_update()):
            evidence.erase_person(dispute, addresses | {name} - {None})
    session.execute(delete(CheckoutKey).where(CheckoutKey.stripe_request["client_reference_id"].as_string() == student_id)
                    .execution_options(synchronize_session=False))
    own, carrying = _subjects(session, student_id, payments, addresses)
    keep_erased_subjects(session, student_id, own, now)
    # of a payment that only carries their address, the checkout that carries it: its refunds are not theirs
    about = or_(InboxEvent.subject.in_(own), and_(InboxEvent.subject.in_(carrying), _CHECKOUT))
    references = {email_reference(address) for address in addresses}
    events = pending = 0
    for event in session.scalars(select(InboxEvent).where(about)):
        _scrub_references(event, references)
        if event.status in STILL_TO_APPLY:
            pending += 1
        else:
            events += retention.prune_event(event, now=now)  # one that gave up waiting no longer wakes
    session.flush()
    return Erased(student_id, mails, events, pending)
