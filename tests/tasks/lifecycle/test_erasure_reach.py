"""What an erasure reaches beyond the student's row and their enrollment's mails: dispute evidence, mails to a
former address, checkouts that name the student another way, payments known by their charge, a profile update
still in the inbox; and what it must leave alone (the admins' alerts)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from sqlalchemy import func, select, update

from db.enums import BundleKind, CreditType, InboxStatus, OutboxChannel, OutboxStatus
from db.models import CreditPackage, ErasedSubject, InboxEvent, OutboxMessage, PaymentDispute, Student, StudentCourseEnrollment
from db.types import utcnow
from tasks.lifecycle import erasure, retention
from tasks.purchases import evidence, fulfilment
from tests import factories
from tests.tasks.bookings import bookings_support as bookings
from tests.tasks.purchases.payments_support import checkout, deliver, dispute_created, refund_created, run, store

ADDRESS, NAME = "ada@example.test", "Ada Lovelace"


def _purchase(db):
    with db.session_scope() as s:
        factories.student(s, email=ADDRESS, name=NAME)
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    deliver(db, checkout(email=ADDRESS))
    with db.session_scope() as s:  # the welcome mail went out
        s.execute(update(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome")
                  .values(status=OutboxStatus.SENT, sent_at=utcnow()))


def _erase(db) -> erasure.Erased:
    with db.session_scope() as s:
        return erasure.erase_student(session=s, student_id="stu_1")


def _everything(db) -> str:
    with db.session_scope() as s:
        dump = [str(p) for p in s.scalars(select(InboxEvent.payload))]
        dump += [str((m.recipient, m.payload, m.dedupe_key)) for m in s.scalars(select(OutboxMessage))]
        dump += [str((d.evidence, d.evidence_files)) for d in s.scalars(select(PaymentDispute))]
        return " ".join(dump)


def test_dispute_evidence_is_redacted_drafted_or_submitted(database):
    """Before, the dispute's stored evidence kept the customer's name and address (in its own fields, the
    receipt, and a line per mail sent)."""
    _purchase(database)
    deliver(database, dispute_created(dispute="dp_draft", pi="pi_1"))
    with database.session_scope() as s:
        row = s.scalar(select(PaymentDispute))
        assert ADDRESS in str(row.evidence) and NAME in str(row.evidence)
        # a second dispute whose evidence was submitted: what was sent is kept, without the person
        submitted = dict(row.evidence)
        s.add(PaymentDispute(stripe_dispute_id="dp_sent", stripe_payment_intent_id="pi_1",
                             enrollment_id=row.enrollment_id, status=row.status, amount=row.amount,
                             evidence=submitted, evidence_status=evidence.SUBMITTED, evidence_submitted_at=utcnow()))
    _erase(database)
    assert ADDRESS not in _everything(database) and NAME not in _everything(database)
    with database.session_scope() as s:
        draft = s.scalar(select(PaymentDispute).where(PaymentDispute.stripe_dispute_id == "dp_draft"))
        sent = s.scalar(select(PaymentDispute).where(PaymentDispute.stripe_dispute_id == "dp_sent"))
        assert draft.evidence is None and draft.evidence_status == evidence.DRAFT  # drafted again when shown
        assert sent.evidence_status == evidence.SUBMITTED
        assert sent.evidence["customer_email_address"] == sent.evidence["customer_name"] == "[erased]"
        assert "purchase: checkout session cs_test_1" in sent.evidence["access_activity_log"]
        assert "[erased]" in sent.evidence["receipt"] and "Total charged" in sent.evidence["receipt"]
        shown = evidence.view(session=s, stripe_dispute_id="dp_draft")["evidence"]
        assert shown["customer_email_address"] == "" and ADDRESS not in str(shown)


@pytest.mark.parametrize("purchase", ["package", "course, its mail pruned"])
def test_submitted_evidence_loses_an_address_the_student_has_since_changed(database, purchase):
    """The erasure redacted the current address and those of the mails on record only: the address the evidence
    was drafted with stayed in its receipt (and mail lines) once the student had moved to another, when no mail
    named it any more (a package purchase sends none; retention had pruned the course's welcome)."""
    former = "ada.old@example.test"
    with database.session_scope() as s:
        factories.student(s, email=former, name=NAME)
        s.add(CreditPackage(code="P5", title="Five", price_amount=5000, credit_type=CreditType.GROUP, quantity=5))
        factories.program(s, bundle=())
    if purchase == "package":
        deliver(database, checkout(package="P5", amount=5000, email=former))
    else:
        deliver(database, checkout(email=former))
        with database.session_scope() as s:  # the welcome went out
            s.execute(update(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome")
                      .values(status=OutboxStatus.SENT, sent_at=utcnow()))
    deliver(database, dispute_created(dispute="dp_1", pi="pi_1"))
    with database.session_scope() as s:  # submitted as drafted
        row = s.scalar(select(PaymentDispute))
        row.evidence_status, row.evidence_submitted_at = evidence.SUBMITTED, utcnow()
        assert f"Student: stu_1 <{former}>" in row.evidence["receipt"]
    bookings.deliver(database, bookings.student_upserted(email=ADDRESS, name=NAME, when=utcnow()))
    if purchase != "package":
        with database.session_scope() as s:  # RETENTION_DAYS later: the welcome's address is gone
            assert retention.prune(session=s, retention_days=400, now=utcnow() + timedelta(days=401)).mails == 1
    _erase(database)
    assert former not in _everything(database)
    with database.session_scope() as s:
        sent = s.scalar(select(PaymentDispute)).evidence
    assert "Student: stu_1 <[erased]>" in sent["receipt"] and "Total charged" in sent["receipt"]
    if purchase != "package":
        assert "  to [erased]  \"Welcome to" in sent["customer_communication"]


def test_the_evidence_drafted_after_an_erasure_still_lists_the_mails_sent(database):
    """Before, a mail whose address was erased (recipient NULL) was left out: "No mail was sent to the customer"
    for a student who had been sent a welcome."""
    _purchase(database)
    _erase(database)
    deliver(database, dispute_created(dispute="dp_late", pi="pi_1"))
    with database.session_scope() as s:
        shown = evidence.view(session=s, stripe_dispute_id="dp_late")["evidence"]
    assert "(enrollment_welcome)" in shown["customer_communication"]
    assert "to (address erased)" in shown["customer_communication"] and ADDRESS not in str(shown)


@pytest.mark.parametrize("forgotten_by", ["erasure", "retention"])
def test_a_package_disputes_evidence_still_lists_the_students_booking_mails_once_their_address_is_gone(
        database, forgotten_by):
    """A credit booking's mail has no enrollment: a package purchase's mails were found by the student's current
    address only, and once erasure or retention took the mail's recipient the evidence said "No mail was sent to
    the customer"."""
    w = bookings.world(database, enrolled=False)
    with database.session_scope() as s:
        s.add(CreditPackage(code="P5", title="Five", price_amount=5000, credit_type=CreditType.GROUP, quantity=5))
    deliver(database, checkout(package="P5", amount=5000, email="stu_1@example.test"))
    bookings.deliver(database, bookings.booking_created("bk_1", w.option(1), credit_type="group"))
    bookings.deliver(database, bookings.class_upserted(w.option(1), status="cancelled", when=utcnow()))
    with database.session_scope() as s:
        s.execute(update(OutboxMessage).values(status=OutboxStatus.SENT, sent_at=utcnow()))
    deliver(database, dispute_created(dispute="dp_1", pi="pi_1", amount=5000))
    if forgotten_by == "erasure":
        _erase(database)
    else:
        with database.session_scope() as s:
            assert retention.prune(session=s, retention_days=400, now=utcnow() + timedelta(days=401)).mails == 1
    with database.session_scope() as s:
        mail = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "class_cancelled"))
        assert mail.recipient is None
        shown = evidence.view(session=s, stripe_dispute_id="dp_1")["evidence"]
    assert f"Message-ID <{mail.public_id}@coursepipe>  to (address erased)" in shown["customer_communication"]
    assert "1 mail(s) were sent" in shown["uncategorized_text"]


def test_the_admins_alerts_about_the_enrollment_are_still_sent(database):
    """Before, every mail linked to the enrollment was killed, the admins' dispute alert too: they never heard
    of the dispute or its deadline."""
    _purchase(database)
    deliver(database, dispute_created(dispute="dp_1", pi="pi_1"))
    _erase(database)
    with database.session_scope() as s:
        alert = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "dispute_alert"))
        assert (alert.status, alert.recipient, alert.last_error) == (OutboxStatus.PENDING, "@admins", None)
        assert alert.dedupe_key == "mail:dispute_alert:dp_1:" + alert.dedupe_key.rsplit(":", 1)[1]


def test_a_booking_mail_to_a_former_address_is_erased_and_never_sent(database):
    """A credit booking's mail has no enrollment; written to the address of the time, it was missed once the
    student changed address: kept, and still sent after the erasure."""
    w = bookings.world(database, enrolled=False, group_credits=1)
    bookings.deliver(database, bookings.booking_created("bk_1", w.option(1), credit_type="group"))
    bookings.deliver(database, bookings.class_upserted(w.option(1), status="cancelled", when=utcnow()))
    with database.session_scope() as s:
        mail = s.scalar(select(OutboxMessage).where(OutboxMessage.channel == OutboxChannel.MAIL))
        assert mail.recipient == "stu_1@example.test" and mail.enrollment_id is None
    bookings.deliver(database, bookings.student_upserted(email="new@example.test", when=utcnow()))
    assert _erase(database).mails == 1
    assert "stu_1@example.test" not in _everything(database)
    with database.session_scope() as s:
        mail = s.get(OutboxMessage, mail.id)
        assert mail.status == OutboxStatus.DEAD and mail.recipient is None


def test_a_profile_update_older_than_the_erasure_does_not_bring_the_data_back(database):
    """Stored before the erasure and applied after it (or redelivered late), a `student.upserted` that occurred
    before it restored the address: the row had no newer update on record."""
    _purchase(database)
    late = bookings.student_upserted(email=ADDRESS, name=NAME, when=utcnow() - timedelta(days=3))
    _erase(database)
    bookings.deliver(database, late)
    bookings.deliver(database, bookings.twin(late))  # the same late update twice: still not applied
    with database.session_scope() as s:
        student = s.get(Student, "stu_1")
        assert (student.email, student.name) == (None, None)
        assert student.erased_at is not None  # a stale update does not bring the student back
    deliver(database, checkout(cs="cs_after", pi="pi_after", email=ADDRESS, event_id="evt_after"))
    with database.session_scope() as s:  # so a checkout applied now still records no address
        after = s.scalar(select(StudentCourseEnrollment)
                         .where(StudentCourseEnrollment.stripe_checkout_session_id == "cs_after"))
        assert after.fulfilment_metadata["customer_email"] is None
    # one the platform sends after the erasure is applied as usual
    back = bookings.student_upserted(email="back@example.test", when=utcnow() + timedelta(seconds=1))
    bookings.deliver(database, back)
    bookings.deliver(database, bookings.twin(back))
    with database.session_scope() as s:
        assert s.get(Student, "stu_1").email == "back@example.test"
        assert s.get(Student, "stu_1").erased_at is None


def test_checkouts_that_name_the_student_by_metadata_or_by_address_are_pruned(database):
    """Only checkouts whose `client_reference_id` named the student were found: one naming them in its metadata,
    or carrying only their address (a buyer we could not place), kept the address and the name."""
    _purchase(database)
    by_metadata = checkout(cs="cs_meta", pi="pi_meta", student=None, course="NOPE", email=ADDRESS,
                           metadata={"kind": "course", "course_code": "NOPE", "student_id": "stu_1"})
    by_address = checkout(cs="cs_addr", pi="pi_addr", student=None, course="NOPE", email=ADDRESS,
                          metadata={"kind": "course", "course_code": "NOPE"})
    for event in (by_metadata, by_address):
        deliver(database, event)
    with database.session_scope() as s:
        assert s.scalar(select(InboxEvent.status).where(InboxEvent.event_id == by_address["id"])) == InboxStatus.FAILED
    _erase(database)
    assert ADDRESS not in _everything(database) and "Buyer" not in _everything(database)


@pytest.mark.parametrize("spelled", [ADDRESS, ADDRESS.replace("ada@example", "Ada@Example")], ids=["as_kept", "other_case"])
def test_a_checkout_whose_buyer_was_not_placed_loses_the_digest_of_the_address_in_its_error(database, spelled):
    """A checkout naming no student, paid with an address no student had then, failed with the address's digest
    in its error (`sha256:…`); the erasure of the student who had that address since pruned its payload but left
    the digest, which links the known address to the row. The buyer is matched by address in any case, and so
    is such a checkout now; spelled `Ada@Example.test`, it kept its payload and its digest."""
    with database.session_scope() as s:
        factories.student(s, email="before@example.test", name=NAME)
        factories.program(s, bundle=())
    orphan = checkout(cs="cs_orphan", pi="pi_orphan", student=None, email=spelled, event_id="evt_orphan")
    deliver(database, orphan)
    reference = fulfilment.email_reference(ADDRESS)
    with database.session_scope() as s:
        row = s.scalar(select(InboxEvent).where(InboxEvent.event_id == "evt_orphan"))
        assert row.status == InboxStatus.FAILED and reference in row.last_error
    bookings.deliver(database, bookings.student_upserted(email=ADDRESS, name=NAME, when=utcnow()))
    _erase(database)
    with database.session_scope() as s:
        row = s.scalar(select(InboxEvent).where(InboxEvent.event_id == "evt_orphan"))
        assert spelled not in str(row.payload)
        assert reference.split(":", 1)[1] not in row.last_error
        assert "e-mail ([erased]) matches no single known student" in row.last_error


def test_events_about_a_payment_known_by_its_charge_are_pruned(database):
    """An event without a payment intent is the charge's (`payment:ch_…`): its payload was kept, although the
    dispute on record names the charge."""
    _purchase(database)
    deliver(database, dispute_created(dispute="dp_1", pi="pi_1", charge="ch_1"))
    event = refund_created(refund_id="re_ch", pi=None, charge="ch_1", amount=500)
    event["data"]["object"]["receipt_email"] = ADDRESS
    deliver(database, event)
    with database.session_scope() as s:
        row = s.scalar(select(InboxEvent).where(InboxEvent.event_id == event["id"]))
        assert row.subject == "payment:ch_1" and row.status not in erasure.STILL_TO_APPLY, row.last_error
    _erase(database)
    assert ADDRESS not in _everything(database)


def test_erasing_a_student_leaves_another_students_mail_and_checkouts_alone(database):
    """Booking mails were matched by `mail:%:<booking id>:%`: erasing the student of booking "1" killed the welcome
    of enrollment 1 (another student's: `mail:enrollment_welcome:1:…`), took that student's address for one of
    theirs, and pruned that student's checkout through it."""
    from db.enums import BookingStatus, CreditType
    from db.models import Booking
    from tasks.messaging.outbox import add_mail

    with database.session_scope() as s:
        factories.program(s, bundle=())
        factories.student(s, id="stu_b", email="bea@example.test", name="Bea")
        factories.student(s, id="stu_a", email="ann@example.test", name="Ann")
        factories.group_class(s, id="gc_1")
    deliver(database, checkout(cs="cs_b", pi="pi_b", student="stu_b", email="bea@example.test"))
    with database.session_scope() as s:
        welcome = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome"))
        assert welcome.enrollment_id == 1 and welcome.dedupe_key.startswith("mail:enrollment_welcome:1:")
        s.add(Booking(id="1", student_id="stu_a", class_id="gc_1", status=BookingStatus.CANCELLED,
                      credit_type=CreditType.GROUP))
        s.flush()
        add_mail(session=s, template="class_cancelled", recipient="ann@example.test", context={"student_name": "Ann"},
                 dedupe_key="class_cancelled:1")
    with database.session_scope() as s:
        assert erasure.erase_student(session=s, student_id="stu_a").mails == 1
    with database.session_scope() as s:
        welcome = s.get(OutboxMessage, welcome.id)
        assert (welcome.status, welcome.recipient) == (OutboxStatus.PENDING, "bea@example.test")
        assert "bea@example.test" in str(s.scalar(select(InboxEvent.payload).where(InboxEvent.subject == "payment:pi_b")))
        cancelled = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "class_cancelled"))
        assert (cancelled.status, cancelled.recipient) == (OutboxStatus.DEAD, None)


def test_the_stripe_requests_kept_for_the_student_s_checkout_keys_are_forgotten(database):
    """A checkout's Idempotency-Key keeps the Stripe request it built, the buyer's address in it, for a day; an
    erasure forgets the student's keys (a retry then makes a new session), and leaves another student's."""
    from db.models import CheckoutKey

    with database.session_scope() as s:
        for key, student, email in (("k1", "stu_1", ADDRESS), ("k2", "stu_2", "bea@example.test")):
            s.add(CheckoutKey(request_key=key, request_digest="d" * 64, stripe_request={
                "client_reference_id": student, "customer_email": email, "metadata": {"student_id": student}}))
        factories.student(s, email=ADDRESS, name=NAME)
    _erase(database)
    with database.session_scope() as s:
        assert [k.request_key for k in s.scalars(select(CheckoutKey))] == ["k2"]


def test_evidence_lists_no_admin_alert_as_a_mail_to_the_customer(database):
    """An alert to @admins linked to the enrollment, pruned by an earlier version (its recipient NULL), was listed in
    the evidence as a mail sent to the customer."""
    _purchase(database)
    deliver(database, dispute_created(dispute="dp_1", pi="pi_1"))
    with database.session_scope() as s:  # the alert sent, then pruned as an earlier version pruned it
        s.execute(update(OutboxMessage).where(OutboxMessage.topic == "dispute_alert")
                  .values(status=OutboxStatus.SENT, sent_at=utcnow(), recipient=None))
        shown = evidence.view(session=s, stripe_dispute_id="dp_1")["evidence"]["customer_communication"]
    assert "(enrollment_welcome)" in shown and "dispute_alert" not in shown


def test_redaction_takes_whole_words_only():
    """A short name was replaced inside other words: "Al" turned "Total charged" into "Tot[erased] charged"."""
    row = PaymentDispute(stripe_dispute_id="dp_x", evidence_status=evidence.SUBMITTED, evidence={
        "receipt": "Student: stu_1 <al@example.test>\nTotal charged: 120.00 USD", "customer_name": "Al"})
    evidence.erase_person(row, {"Al", "al@example.test"})
    assert row.evidence == {"receipt": "Student: stu_1 <[erased]>\nTotal charged: 120.00 USD",
                            "customer_name": "[erased]"}


def test_a_student_with_hundreds_of_bookings_is_erased(database):
    """The booking mails were matched by one OR'd clause a booking and template: past ~333 bookings SQLite refused
    the statement ("Expression tree is too large"), and the erasure ended in a traceback."""
    from db.enums import BookingStatus, CreditType
    from db.models import Booking
    from tasks.messaging.outbox import add_mail

    with database.session_scope() as s:
        factories.student(s, email=ADDRESS, name=NAME)
        factories.group_class(s, id="gc_1")
        s.add_all([Booking(id=f"bk_{n}", student_id="stu_1", class_id="gc_1", status=BookingStatus.CANCELLED,
                           credit_type=CreditType.GROUP) for n in range(400)])
        s.flush()
        add_mail(session=s, template="class_cancelled", recipient="old@example.test", context={},
                 dedupe_key="class_cancelled:bk_399")
    assert _erase(database).mails == 1
    assert "old@example.test" not in _everything(database)


def _retention(db) -> retention.Pruned:
    with db.session_scope() as s:
        return retention.prune(session=s, retention_days=400)  # nothing here is that old


def _payload(db, event) -> str:
    with db.session_scope() as s:
        return str(s.scalar(select(InboxEvent.payload).where(InboxEvent.event_id == event["id"])))


def test_a_checkout_still_to_apply_at_the_erasure_is_applied_without_the_address_and_pruned_once_ended(database):
    """Pending when the student was erased, the checkout kept its payload for RETENTION_DAYS after it was applied,
    and the enrollment recorded the address it carried: erased data came back."""
    with database.session_scope() as s:
        factories.student(s, email=ADDRESS, name=NAME)
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    event = checkout(email=ADDRESS)
    inbox_id = store(database, event)
    erased = _erase(database)
    assert (erased.events, erased.pending) == (0, 1)  # still to apply: kept for now, and said so
    assert erased.as_dict()["events_still_to_apply"] == 1
    assert run(database, inbox_id).outcome.value == "processed"
    with database.session_scope() as s:  # the purchase is the studio's record: the enrollment and its credits
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert enrollment.student_id == "stu_1" and enrollment.fulfilment_metadata["customer_email"] is None
        assert s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome")) is None
    assert ADDRESS in _payload(database, event)  # applied: the next retention run prunes it
    assert _retention(database).erased == 1
    assert ADDRESS not in _everything(database) and NAME not in _everything(database)
    assert _retention(database).erased == 0  # pruned once


def test_events_about_an_erased_student_arriving_later_are_pruned_and_a_new_payment_is_not(database):
    """A redelivered checkout and a profile update older than the erasure, arriving after it, kept their payloads
    for RETENTION_DAYS. The student then comes back (a later `student.upserted`): their new purchase is new data,
    recorded and kept as any other."""
    _purchase(database)
    _erase(database)
    copy = checkout(email=ADDRESS, event_id="evt_copy")
    late = bookings.student_upserted(email=ADDRESS, name=NAME, when=utcnow() - timedelta(days=3))
    deliver(database, copy)
    bookings.deliver(database, late)
    with database.session_scope() as s:
        assert s.get(Student, "stu_1").email is None  # the late update was not applied
    assert ADDRESS in _payload(database, copy) and NAME in _payload(database, late)
    assert _retention(database).erased == 2
    assert ADDRESS not in _everything(database) and NAME not in _everything(database)
    back = bookings.student_upserted(email="back@example.test", name="Back", when=utcnow() + timedelta(seconds=1))
    bookings.deliver(database, back)
    new = checkout(cs="cs_new", pi="pi_new", email="back@example.test", event_id="evt_new")
    deliver(database, new)
    with database.session_scope() as s:
        student = s.get(Student, "stu_1")
        assert (student.email, student.erased_at) == ("back@example.test", None)
        enrollment = s.scalar(select(StudentCourseEnrollment)
                              .where(StudentCourseEnrollment.stripe_checkout_session_id == "cs_new"))
        assert enrollment.fulfilment_metadata["customer_email"] == "back@example.test"
    assert _retention(database).erased == 1  # the profile update, on the student's own subject, once applied
    assert "back@example.test" in _payload(database, new)


@pytest.mark.parametrize("marked", [False, True], ids=["runner", "marked a purchase"])
def test_a_new_payment_of_the_erased_student_is_forgotten_once_applied(database, marked):
    """A session opened before the erasure and paid after it: the enrollment recorded no e-mail, but its payment
    was no erased subject, so the checkout and its refund kept the address in the inbox for RETENTION_DAYS."""
    _purchase(database)
    with database.session_scope() as s:
        factories.program(s, code="B2", bundle=())
    _erase(database)
    late = checkout(cs="cs_late", pi="pi_late", course="B2", email=ADDRESS, event_id="evt_late")
    assert deliver(database, late, marked=marked).outcome.value == "processed"
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment)
                              .where(StudentCourseEnrollment.stripe_checkout_session_id == "cs_late"))
        assert enrollment.student_id == "stu_1" and enrollment.fulfilment_metadata["customer_email"] is None
        assert s.get(ErasedSubject, "payment:pi_late").student_id == "stu_1"
    refund = refund_created(refund_id="re_late", pi="pi_late", amount=500, event_id="evt_re_late")
    refund["data"]["object"]["receipt_email"] = ADDRESS
    assert deliver(database, refund).outcome.value == "processed"
    assert _retention(database).erased == 2
    assert ADDRESS not in _everything(database) and NAME not in _everything(database)


def _paid_for_by_a_parent(database) -> dict:
    """The parent (stu_1, ADDRESS) pays for the child (stu_2) with their own address: the checkout, applied."""
    with database.session_scope() as s:
        factories.student(s, email=ADDRESS, name=NAME)
        factories.student(s, id="stu_2", email="kid@example.test", name="Kid")
        factories.program(s, bundle=())
    paid_for = checkout(cs="cs_2", pi="pi_2", student="stu_2", email=ADDRESS, event_id="evt_2")
    deliver(database, paid_for)
    return paid_for


def test_another_students_checkout_carrying_the_address_is_pruned_now_and_their_later_events_are_not(database):
    """A parent paid for a child (stu_2) with their own address: erasing the parent (stu_1) prunes that checkout's
    payload, which carries the address, but kept the child's payment as an erased subject, so the child's
    refund a day later lost its payload within the hour."""
    paid_for = _paid_for_by_a_parent(database)
    _erase(database)
    assert ADDRESS not in _payload(database, paid_for)
    with database.session_scope() as s:
        assert "payment:pi_2" not in set(s.scalars(select(ErasedSubject.subject)))
    refund = refund_created(refund_id="re_2", pi="pi_2", amount=500, event_id="evt_re_2")
    deliver(database, refund)
    assert _retention(database).erased == 0
    assert "pruned_at" not in _payload(database, refund)


def test_the_other_students_failed_refund_on_a_checkout_carrying_the_address_stays_replayable(database):
    """Erasing the parent pruned every event on the child's payment, not only the checkout carrying the parent's
    address: the child's refund that had failed could no longer be replayed (409 payload_pruned), and the refund
    was never applied."""
    from tasks.inbox import admin

    paid_for = _paid_for_by_a_parent(database)
    refund = refund_created(refund_id="re_2", pi="pi_2", amount=500, event_id="evt_re_2")
    inbox_id = store(database, refund)
    with database.session_scope() as s:  # it failed (a database outage past its retries): to replay after
        s.execute(update(InboxEvent).where(InboxEvent.id == inbox_id).values(status=InboxStatus.FAILED))
    erased = _erase(database)
    assert erased.events == 1 and ADDRESS not in _payload(database, paid_for)  # the checkout only
    with database.session_scope() as s:
        admin.replay(session=s, inbox_id=inbox_id)
    assert run(database, inbox_id).outcome.value == "processed"
    with database.session_scope() as s:
        child = s.scalar(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == "stu_2"))
        assert child.amount_refunded == 500


def test_an_event_about_an_erased_student_that_failed_stays_replayable(database):
    """Pruned within the hour, a failed refund of the erased student's payment could never be replayed (409
    payload_pruned): it is left to the age rule, and pruned once a replay has applied it."""
    from db.enums import InboxStatus as Status

    _purchase(database)
    _erase(database)
    refund = refund_created(refund_id="re_9", pi="pi_1", amount=500, event_id="evt_re_9")
    deliver(database, refund)
    with database.session_scope() as s:  # as if it had failed
        s.execute(update(InboxEvent).where(InboxEvent.event_id == "evt_re_9").values(status=Status.FAILED))
    assert _retention(database).erased == 0 and "pruned_at" not in _payload(database, refund)
    with database.session_scope() as s:
        s.execute(update(InboxEvent).where(InboxEvent.event_id == "evt_re_9").values(status=Status.PROCESSED))
    assert _retention(database).erased == 1 and "pruned_at" in _payload(database, refund)


def test_a_waiting_event_about_an_erased_student_is_pruned_only_once_it_ends(database):
    """A refund parked before its purchase, at the erasure: it keeps its payload while it waits, and is pruned once
    the purchase wakes it and it is applied."""
    with database.session_scope() as s:
        factories.student(s, email=ADDRESS, name=NAME)
        factories.program(s, bundle=())
    refund = refund_created(refund_id="re_1", pi="pi_1", amount=500)
    refund["data"]["object"]["receipt_email"] = ADDRESS
    assert deliver(database, refund).outcome.value == "waiting"
    purchase = store(database, checkout(email=ADDRESS))
    _erase(database)
    assert _retention(database).erased == 0 and ADDRESS in _payload(database, refund)
    run(database, purchase)
    with database.session_scope() as s:
        assert s.scalar(select(InboxEvent.status).where(InboxEvent.event_id == refund["id"])) == InboxStatus.PROCESSED
    assert _retention(database).erased == 2
    assert ADDRESS not in _everything(database)


def test_erased_subjects_are_forgotten_after_the_retention_period(database):
    _purchase(database)
    _erase(database)
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ErasedSubject)) >= 2  # the student, the payment
        s.execute(update(ErasedSubject).values(erased_at=utcnow() - timedelta(days=401)))
    _retention(database)
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ErasedSubject)) == 0


@pytest.mark.parametrize("fast", [False, True], ids=["general path", "fast path"])
def test_an_erasure_and_a_purchase_at_the_same_moment_leave_no_address(pg_database, fast):
    """The purchase read its buyer (not erased yet), the erasure took the student's row, found no enrollment
    (not committed yet) and committed; the purchase then wrote the address onto its enrollment, for good. The
    buyer is now read under a key-share lock: the erasure waits for the purchase, then finds its enrollment."""
    import threading

    from tests.conftest import while_held

    database = pg_database
    with database.session_scope() as s:
        factories.student(s, email=ADDRESS, name=NAME)
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    event = checkout(email=ADDRESS)
    read, release = threading.Event(), threading.Event()

    def purchase():
        if fast:  # the fast path's statements on a psycopg connection of the pool, in one transaction
            from tasks.purchases import fast_purchase

            inbox_id = store(database, event)

            class Pausing:  # the connection, pausing once the buyer has been read
                def __init__(self, conn):
                    self.conn = conn

                def __getattr__(self, name):
                    return getattr(self.conn, name)

                def execute(self, query, params=None, **kw):
                    result = self.conn.execute(query, params, **kw)
                    if query is fast_purchase._PREPARE:
                        read.set()
                        assert release.wait(30)
                    return result

            with database.engine.connect() as conn:
                raw = conn.connection.driver_connection
                with raw.transaction():
                    assert fast_purchase.attempt(Pausing(raw), inbox_id, set()) is not None
            return
        with database.session_scope() as f:
            product = fulfilment.identify_product(f, event["data"]["object"])
            student = fulfilment.ensure_student(f, "stu_1", event["data"]["object"])
            read.set()
            assert release.wait(30)
            fulfilment._fulfil_course(f, event["data"]["object"], fulfilment.COMPLETED, event["id"], product,
                                      student, "paid")

    _, erased, waited = while_held(database, purchase, lambda: _erase(database), held=read, release=release)
    assert waited, "the erasure did not wait for the purchase holding its buyer"
    erased.result()
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert enrollment is not None and enrollment.fulfilment_metadata["customer_email"] is None
        assert s.get(Student, "stu_1").email is None


@pytest.mark.parametrize("kind", ["step", "credit"])
def test_an_erasure_and_a_booking_at_the_same_moment_leave_no_address(pg_database, kind):
    """The booking read its student (not erased yet); the erasure took the student's row first, so the booking's
    insert waited on it (its foreign key), then went on once the erasure had committed and wrote its confirmation
    to the address read before: after the erasure had looked for the student's mails. The address a booking mail
    goes to is now read under a key-share lock as the mail is written: after the erasure, there is none."""
    import threading

    from tests.conftest import while_held

    database = pg_database
    w = bookings.world(database, enrolled=kind == "step", group_credits=int(kind == "credit"))
    event = (bookings.booking_created("bk_1", w.option(1), step_id=w.step_ids[0]) if kind == "step" else
             bookings.booking_created("bk_1", w.option(1), credit_type="group"))
    inbox_id = bookings.store(database, event)
    held, release = threading.Event(), threading.Event()

    def erase():
        with database.session_scope() as s:
            erased = erasure.erase_student(session=s, student_id="stu_1")
            held.set()
            assert release.wait(30)
            return erased

    _, booked, waited = while_held(database, erase, lambda: bookings.run(database, inbox_id), held=held,
                                   release=release)
    assert waited, "the booking did not wait for the erasure holding its student"
    assert booked.result().outcome.value == "processed"
    assert bookings.booking(database, "bk_1") is not None
    assert "stu_1@example.test" not in _everything(database)
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.channel == OutboxChannel.MAIL, OutboxMessage.recipient.is_not(None))) == 0


def _cancel_beside_an_erasure(database, monkeypatch, inbox_id: int, pause_in: str) -> None:
    """Run the stored cancellation, paused on entering `tasks.bookings.services.<pause_in>` (what it locked before
    stays held) while an erasure starts beside it, and let it go once the erasure waits: both go through, neither
    ended by PostgreSQL to break a deadlock, and the address is nowhere after them."""
    import threading

    from tasks.bookings import services
    from tests.conftest import while_held

    held, release = threading.Event(), threading.Event()
    real = getattr(services, pause_in)

    def pausing(*args, **kw):
        held.set()
        assert release.wait(30)
        return real(*args, **kw)

    monkeypatch.setattr(services, pause_in, pausing)
    result, erased, _waited = while_held(database, lambda: bookings.run(database, inbox_id), lambda: _erase(database),
                                         held=held, release=release)
    assert result.outcome.value == "processed", result.error
    erased.result()  # not ended by PostgreSQL to break a deadlock
    assert "stu_1@example.test" not in _everything(database)


@pytest.mark.parametrize("event", ["booking.cancelled", "class.upserted"])
def test_an_erasure_and_a_cancellation_holding_the_enrollment_do_not_deadlock(pg_database, monkeypatch, event):
    """A cancellation locked the enrollment (a booking's cancel, or a class's) and then, writing its mail, asked
    for the student under a key-share lock, while an erasure held the student and waited to clear the e-mail on
    that enrollment: PostgreSQL ended one of them (found by review). A booking's change now takes the student's
    key-share lock before the enrollment, the order the erasure takes them in: one waits for the other."""
    from db.types import utcnow

    database = pg_database
    w = bookings.world(database, enrolled=True)
    with database.session_scope() as s:
        s.execute(update(StudentCourseEnrollment).values(fulfilment_metadata={"customer_email": "stu_1@example.test"}))
    assert bookings.deliver(database, bookings.booking_created("bk_1", w.option(1),
                                                               step_id=w.step_ids[0])).outcome.value == "processed"
    cancel = (bookings.booking_cancelled("bk_1") if event == "booking.cancelled" else
              bookings.class_upserted(w.option(1), status="cancelled", when=utcnow()))
    _cancel_beside_an_erasure(database, monkeypatch, bookings.store(database, cancel), "_attached_progress")
    with database.session_scope() as s:
        assert s.scalar(select(StudentCourseEnrollment.fulfilment_metadata))["customer_email"] is None


def test_an_erasure_and_a_class_cancellation_over_a_reminder_listing_it_do_not_deadlock(pg_database, monkeypatch):
    """The class's cancellation ended the pending reminders listing it (their rows locked), then took its booked
    students; the erasure of one of them, who also had such a reminder, held the student and waited for that
    reminder: PostgreSQL ended one of the two (found by review). A cancellation now holds its booked students
    first, before the reminders: the erasure waits for it."""
    from db.types import utcnow
    from tasks.enrollments.reminders import send_reminders
    from tests.conftest import make_settings

    database = pg_database
    w = bookings.world(database, enrolled=True, group_credits=1)
    # a credit booking into step 1's class: step 1 stays unbooked, and its reminder lists that class
    assert bookings.deliver(database, bookings.booking_created("bk_c", w.option(1), credit_type="group")
                            ).outcome.value == "processed"
    settings = make_settings(database.url, reminders_enabled=True, reminder_window_days=7)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) >= 1
    cancel = bookings.class_upserted(w.option(1), status="cancelled", when=utcnow())
    _cancel_beside_an_erasure(database, monkeypatch, bookings.store(database, cancel), "cancel_class")

