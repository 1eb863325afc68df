"""Erasing a student (`coursepipe students erase ID`): personal data removed, financial records kept.

Removed: the mirror's e-mail, name and time zone; every mail to the student (address and body, whatever
its status: unsent ones are never sent; its dedupe key keeps neither the address nor its digest); the raw
payloads of the inbox events about the student (their profile, their bookings, their checkouts, free or
failed ones too: pruned as retention prunes, keeping ids, a hash and the financial facts). Kept, under the
platform's student id, which names no one once the platform has erased its side: enrollments, purchases,
refunds, disputes, bookings, the credit ledger, the transition log.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus, OutboxChannel, OutboxStatus
from db.models import Booking, InboxEvent, OutboxMessage, PackagePurchase, Student, StudentCourseEnrollment
from db.types import utcnow
from tasks.errors import NotFound
from tasks.lifecycle import retention
from tasks.machines import OUTBOX
from tasks.messaging.outbox import address_digest, scrub_address


# an event still to be applied keeps its payload (it is pruned by retention once applied)
STILL_TO_APPLY = (InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING)


@dataclass
class Erased:
    student_id: str
    mails: int
    events: int

    def as_dict(self) -> dict:
        return {"student_id": self.student_id, "mails_erased": self.mails, "events_pruned": self.events}


def _subjects(session: Session, student_id: str) -> set[str]:
    """The inbox subjects of the student's events: themselves, their bookings, their payments (by payment
    intent, or by checkout session for one without: a free checkout), and every checkout they started,
    whatever became of it (one that failed, for a course unknown then, has no purchase to lead to it)."""
    subjects = {f"student:{student_id}"}
    subjects |= {f"booking:{b}" for b in session.scalars(select(Booking.id).where(Booking.student_id == student_id))}
    for model in (StudentCourseEnrollment, PackagePurchase):
        for pi, cs in session.execute(select(model.stripe_payment_intent_id, model.stripe_checkout_session_id)
                                      .where(model.student_id == student_id)):
            subjects |= {f"payment:{ref}" for ref in (pi, cs) if ref}
    checkouts = select(InboxEvent.subject).where(
        InboxEvent.source == InboxSource.STRIPE, InboxEvent.type.like("checkout.session.%"),
        InboxEvent.payload["data"]["object"]["client_reference_id"].as_string() == student_id)
    subjects |= {subject for subject in session.scalars(checkouts) if subject}
    return subjects


def erase_student(*, session: Session, student_id: str) -> Erased:
    student = session.scalar(select(Student).where(Student.id == student_id).with_for_update())
    if student is None:
        raise NotFound(f"no student {student_id}")
    now = utcnow()
    address = student.email
    student.email = student.name = student.timezone = None
    enrollment_ids = []
    for enrollment in session.scalars(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == student_id)):
        enrollment_ids.append(enrollment.id)
        if (enrollment.fulfilment_metadata or {}).get("customer_email"):  # the checkout's e-mail, as recorded
            enrollment.fulfilment_metadata = {**enrollment.fulfilment_metadata, "customer_email": None}
    mail_filter = [OutboxMessage.enrollment_id.in_(enrollment_ids)] if enrollment_ids else []
    if address:  # by address: as sent, or in the key of a mail written before keys held a digest
        mail_filter += [OutboxMessage.recipient == address,
                        OutboxMessage.dedupe_key.endswith(f":{address}", autoescape=True),
                        OutboxMessage.dedupe_key.endswith(f":{address_digest(address)}")]
    mails = 0
    if mail_filter:
        for message in session.scalars(select(OutboxMessage).where(OutboxMessage.channel == OutboxChannel.MAIL,
                                                                   or_(*mail_filter))):
            if message.status in (OutboxStatus.PENDING, OutboxStatus.SENDING):
                OUTBOX.move(message, OutboxStatus.DEAD, session=session, cause="student erased")
                message.last_error = "student erased: not sent"
            # the address out of the key, its digest too (a mail pruned before by retention included); first, so
            # pruning finds nothing left to rewrite in it
            for sent_to in {message.recipient, address} - {None}:  # the address it went to, and the current one
                scrub_address(session, message, sent_to, erased=True)
            mails += retention.prune_mail(session, message, now=now)
    subjects = _subjects(session, student_id)
    events = 0
    for event in session.scalars(select(InboxEvent).where(InboxEvent.subject.in_(subjects),
                                                          InboxEvent.status.not_in(STILL_TO_APPLY))):
        events += retention.prune_event(event, now=now)
        event.waiting_for = None  # one that gave up waiting must not wake on a payload that is gone
    session.flush()
    return Erased(student_id, mails, events)
