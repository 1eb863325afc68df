"""Refunds: full, partial, before the purchase, and refund.created vs charge.refunded — each twice."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.enums import BookingStatus, BundleKind, CreditType, InboxStatus, ProgressStatus
from db.models import (
    Booking,
    CreditLedgerEntry,
    CreditPackage,
    OutboxMessage,
    PaymentRefund,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from tests import inbox_api as inbox
from tasks.ledger import credits
from tests import factories
from tests.tasks.purchases.payments_support import (
    COURSE_PRICE,
    charge_refunded,
    checkout,
    deliver,
    dispute_closed,
    dispute_created,
    inbox_row,
    refund_created,
    state,
)


def _catalog(database):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 4), (BundleKind.GROUP_CREDIT, 1)))


def _purchase(database, cs="cs_1", pi="pi_1"):
    _catalog(database)
    assert deliver(database, checkout(cs=cs, pi=pi)).outcome is inbox.Outcome.PROCESSED


def _use_some(database):
    """Step 1 attended, step 2 booked (an active booking), one private credit consumed."""
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        rows = s.scalars(select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == enrollment.id)
                         .order_by(StudentCourseProgress.step_id)).all()
        rows[0].status = ProgressStatus.COMPLETED
        rows[1].status, rows[1].booking_id = ProgressStatus.BOOKED, "bk_step2"
        s.add(Booking(id="bk_step2", student_id="stu_1", class_id="gc_x", course_step_id=rows[1].step_id,
                      enrollment_id=enrollment.id, status=BookingStatus.ACTIVE))
        s.add(Booking(id="bk_private", student_id="stu_1", class_id="pc_1", credit_type=CreditType.PRIVATE,
                      status=BookingStatus.ATTENDED))
        s.flush()
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.PRIVATE, booking_id="bk_private")


def _ledger_count(database) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(CreditLedgerEntry))


def test_full_refund_revokes_and_keeps_what_was_used(database):
    _purchase(database)
    _use_some(database)
    event = charge_refunded()
    assert deliver(database, event).outcome is inbox.Outcome.PROCESSED
    after = state(database)
    enrollment = after["enrollments"][0]
    assert enrollment["status"] == "revoked" and enrollment["refunded"] == 12000
    assert enrollment["steps"] == ["completed", "cancelled", "cancelled"]
    # 4 private granted, 1 consumed (kept on record), 3 revoked; the group credit revoked
    assert enrollment["lots"] == [("group", 1, 0), ("private", 4, 0)]
    assert after["balances"] == {"group": 0, "private": 0}
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(CreditLedgerEntry)
                        .where(CreditLedgerEntry.entry_type == "consume")) == 1
        assert s.get(Booking, "bk_step2").status == BookingStatus.ACTIVE  # the platform decides about it
        revoked = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment.revoked"))
        assert revoked.payload["data"]["reason"] == "refunded"
        assert revoked.payload["data"]["active_booking_ids"] == ["bk_step2"]
        refund = s.scalar(select(PaymentRefund))
        assert (refund.refund_key, refund.amount, refund.full) == ("re_1", 12000, True)
    ledger = _ledger_count(database)
    # twice: the same delivery, and another event with the same content
    assert deliver(database, event).outcome is inbox.Outcome.SKIPPED
    assert deliver(database, charge_refunded()).outcome is inbox.Outcome.PROCESSED
    assert state(database) == after and _ledger_count(database) == ledger


def test_partial_refund_keeps_the_enrollment_and_revokes_credits_in_proportion(database):
    _purchase(database)
    half = charge_refunded(refunded=6000, refunds=[("re_1", 6000)])
    deliver(database, half)
    after = state(database)
    enrollment = after["enrollments"][0]
    assert enrollment["status"] == "active" and enrollment["refunded"] == 6000
    assert enrollment["steps"] == ["unbooked"] * 3
    assert enrollment["lots"] == [("group", 1, 1), ("private", 4, 2)]  # floor(4 / 2) and floor(1 / 2) revoked
    with database.session_scope() as s:
        refund = s.scalar(select(PaymentRefund))
        assert (refund.amount, refund.full, refund.enrollment_id is not None) == (6000, False, True)
    deliver(database, charge_refunded(refunded=6000, refunds=[("re_1", 6000)]))  # twice
    assert state(database) == after
    # the rest refunded later: now in full
    deliver(database, charge_refunded(refunded=12000, refunds=[("re_1", 6000), ("re_2", 6000)]))
    final = state(database)["enrollments"][0]
    assert final["status"] == "revoked" and final["lots"] == [("group", 1, 0), ("private", 4, 0)]


def test_two_partial_refunds_in_either_order_revoke_as_their_sum(database):
    _purchase(database)
    # charge.refunded after the second refund arrives first (cumulative 9000), then the first (3000)
    deliver(database, charge_refunded(refunded=9000, refunds=[("re_1", 3000), ("re_2", 6000)]))
    deliver(database, charge_refunded(refunded=3000, refunds=[("re_1", 3000)]))
    enrollment = state(database)["enrollments"][0]
    assert enrollment["refunded"] == 9000 and enrollment["status"] == "active"
    assert enrollment["lots"] == [("group", 1, 1), ("private", 4, 1)]  # floor(4 * 0.75) = 3 revoked


def test_refund_created_and_charge_refunded_count_one_refund_once(database):
    _purchase(database)
    deliver(database, refund_created(refund_id="re_9", amount=3000))
    deliver(database, charge_refunded(refunded=3000, refunds=[("re_9", 3000)]))
    deliver(database, refund_created(refund_id="re_9", amount=3000))  # another event for the same refund
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(PaymentRefund)) == 1
    enrollment = state(database)["enrollments"][0]
    assert enrollment["refunded"] == 3000 and enrollment["lots"] == [("group", 1, 1), ("private", 4, 3)]


def test_wrong_order_refund_before_purchase_waits_then_applies(database):
    _catalog(database)
    refund = charge_refunded(pi="pi_early")
    result = deliver(database, refund)
    assert result.outcome is inbox.Outcome.WAITING
    row = inbox_row(database, refund)
    assert row.status == InboxStatus.WAITING and row.waiting_for == "payment:pi_early"
    deliver(database, checkout(cs="cs_early", pi="pi_early"))  # wakes and runs the refund
    assert inbox_row(database, refund).status == InboxStatus.PROCESSED
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "revoked" and enrollment["steps"] == ["cancelled"] * 3
    assert state(database)["balances"] == {"group": 0, "private": 0}


def test_refund_of_a_package_revokes_its_unconsumed_credits(database):
    with database.session_scope() as s:
        s.add(CreditPackage(code="P5", title="Five", price_amount=5000, credit_type=CreditType.GROUP, quantity=5))
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P5", amount=5000))
    deliver(database, charge_refunded(pi="pi_p", amount=5000, refunded=2000, refunds=[("re_p1", 2000)]))
    assert state(database)["balances"]["group"] == 3  # floor(5 * 0.4) = 2 revoked
    deliver(database, charge_refunded(pi="pi_p", amount=5000, refunded=5000,
                                      refunds=[("re_p1", 2000), ("re_p2", 3000)]))
    after = state(database)
    assert after["balances"]["group"] == 0 and after["packages"][0]["status"] == "refunded"


def test_failed_refund_counts_nothing_and_a_charge_without_payment_intent_is_ignored_with_the_reason(database):
    _purchase(database)
    before = state(database)
    # kept as not counted (so that a late copy of its pending state cannot count it); a repeat is ignored
    assert deliver(database, refund_created(status="failed")).outcome is inbox.Outcome.PROCESSED
    assert deliver(database, refund_created(status="failed")).outcome is inbox.Outcome.IGNORED
    late = deliver(database, refund_created(status="pending"))  # older news, processed last
    assert late.outcome is inbox.Outcome.PROCESSED and state(database) == before
    assert _refund_status(database) == "failed" and not _alerts(database)
    orphan = charge_refunded(pi=None)  # not a Checkout payment: no course or package of ours behind it
    assert deliver(database, orphan).outcome is inbox.Outcome.IGNORED
    assert "has no payment intent" in inbox_row(database, orphan).last_error
    assert state(database)["enrollments"][0]["status"] == "active"


def test_a_credit_released_after_a_refund_is_revoked_only_if_the_refund_was_full(database):
    _purchase(database)
    with database.session_scope() as s:
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.PRIVATE, booking_id="bk_a")
    deliver(database, charge_refunded(refunded=6000, refunds=[("re_1", 6000)]))  # half: 2 of 4 revoked
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1")["private"] == 1
        credits.release_credit(session=s, booking_id="bk_a")  # cancelled within policy
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1")["private"] == 2
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.PRIVATE, booking_id="bk_b")
    deliver(database, charge_refunded(refunded=12000, refunds=[("re_1", 6000), ("re_2", 6000)]))
    with database.session_scope() as s:
        credits.release_credit(session=s, booking_id="bk_b")  # released after a full refund: revoked again
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1")["private"] == 0


def test_a_credit_spent_to_the_last_when_the_refund_came_is_revoked_again_when_released(database):
    """A full refund found nothing left on the lot to revoke (its one credit was booked): the booking cancelled
    within policy afterwards gives the credit back to a revoked purchase, and it is taken back at once."""
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.GROUP_CREDIT, 1),))
    deliver(database, checkout(cs="cs_1", pi="pi_1"))
    with database.session_scope() as s:
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.GROUP, booking_id="bk_c")
    deliver(database, charge_refunded())
    assert state(database)["enrollments"][0]["status"] == "revoked"
    with database.session_scope() as s:
        credits.release_credit(session=s, booking_id="bk_c")
    after = state(database)
    assert after["balances"]["group"] == 0 and after["enrollments"][0]["lots"] == [("group", 1, 0)]


def test_a_package_credit_spent_to_the_last_when_the_refund_came_is_revoked_again_when_released(database):
    with database.session_scope() as s:
        s.add(CreditPackage(code="P1", title="One", price_amount=1000, credit_type=CreditType.GROUP, quantity=1))
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P1", amount=1000))
    with database.session_scope() as s:
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.GROUP, booking_id="bk_c")
    deliver(database, charge_refunded(pi="pi_p", amount=1000, refunded=1000, refunds=[("re_1", 1000)]))
    assert state(database)["packages"][0]["status"] == "refunded"
    with database.session_scope() as s:
        credits.release_credit(session=s, booking_id="bk_c")
    assert state(database)["balances"]["group"] == 0


def test_a_revocation_tells_the_platform_of_each_step_it_cancels(database):
    _purchase(database)
    deliver(database, charge_refunded())
    deliver(database, charge_refunded(event_id="evt_again"))  # the same refund, delivered again
    with database.session_scope() as s:
        moves = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "course_step.progress_changed")
                          .order_by(OutboxMessage.id)).all()
        topics = s.scalars(select(OutboxMessage.topic).where(OutboxMessage.channel == "platform")
                           .order_by(OutboxMessage.sequence)).all()
    steps = [(m.payload["data"]["course_step_id"], m.payload["data"]["from_status"], m.payload["data"]["status"])
             for m in moves]
    assert steps == [(step, "unbooked", "cancelled") for step in (1, 2, 3)]
    assert topics == ["enrollment.created", *["course_step.progress_changed"] * 3, "enrollment.revoked"]


def test_full_refund_of_a_pending_purchase_revokes_it_and_a_later_success_grants_nothing(database):
    _catalog(database)
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="unpaid"))
    deliver(database, charge_refunded(pi="pi_async"))
    deliver(database, checkout(cs="cs_async", pi="pi_async", type_="checkout.session.async_payment_succeeded"))
    after = state(database)
    assert after["enrollments"][0]["status"] == "revoked" and after["enrollments"][0]["lots"] == []
    assert after["balances"] == {"group": 0, "private": 0}
    with database.session_scope() as s:  # the platform was never told about it, so it is not told now
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0


def test_charge_refund_updated_counts_like_refund_created(database):
    from tests.signing import stripe_event

    _purchase(database)
    event = stripe_event("charge.refund.updated", id="re_u", payment_intent="pi_1", amount=3000, charge="ch_1")
    assert deliver(database, event).outcome is inbox.Outcome.PROCESSED
    deliver(database, refund_created(refund_id="re_u", amount=3000))  # the same refund again
    assert state(database)["enrollments"][0]["refunded"] == 3000


def _refund_event(type_: str, refund_id: str, pi: str, amount: int) -> dict:
    event = refund_created(refund_id=refund_id, pi=pi, amount=amount)
    event["type"] = type_
    return event


def test_refund_updated_twice_counts_once(database):
    from tests.tasks.purchases.payments_support import run, store

    _purchase(database)
    event = _refund_event("refund.updated", "re_upd", "pi_1", 3000)
    first = store(database, event)
    assert store(database, event) == first  # a redelivery is the same inbox row
    assert run(database, first).outcome is inbox.Outcome.PROCESSED
    assert run(database, first).outcome is inbox.Outcome.SKIPPED
    deliver(database, _refund_event("refund.updated", "re_upd", "pi_1", 3000))  # a new event id, same refund
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(PaymentRefund)) == 1
    assert state(database)["enrollments"][0]["refunded"] == 3000


def test_refund_updates_before_their_purchase_wait_then_apply_once(database):
    _catalog(database)
    early = [_refund_event("refund.updated", "re_e", "pi_e", 3000),
             _refund_event("charge.refund.updated", "re_e", "pi_e", 3000)]
    for event in early:
        assert deliver(database, event).outcome is inbox.Outcome.WAITING
        assert inbox_row(database, event).waiting_for == "payment:pi_e"
    deliver(database, checkout(cs="cs_e", pi="pi_e"))  # wakes and runs both
    assert [inbox_row(database, e).status for e in early] == [InboxStatus.PROCESSED] * 2
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "active" and enrollment["refunded"] == 3000
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(PaymentRefund)) == 1


@pytest.mark.parametrize("named", ["\u00b2", "9" * 30, "-1", " 1"])
def test_a_refund_whose_metadata_names_no_admin_refund_we_wrote_is_applied_as_any_refund(database, named):
    """Before: "²" passed `str.isdigit` and `int()` raised; thirty digits overflowed the column on PostgreSQL: the
    refund's event failed instead of revoking the purchase it refunded in full."""
    _purchase(database)
    event = refund_created()
    event["data"]["object"]["metadata"] = {"admin_refund_id": named}
    assert deliver(database, event).outcome is inbox.Outcome.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "revoked"


def _malformed(event, path, value):
    target = event["data"]["object"]
    *parents, last = path.split(".")
    for key in parents:
        target = target[key][0] if key == "data" else target[key]
    target[last] = value
    return event


MALFORMED = [
    (lambda: refund_created(), "amount", "500", "amount is not a non-negative integer"),
    (lambda: refund_created(), "amount", -500, "amount is not a non-negative integer"),
    (lambda: refund_created(), "status", ["succeeded"], "status is not a string"),
    (lambda: refund_created(), "status", "bogus", "status 'bogus' is not one of"),
    (lambda: charge_refunded(), "refunds.data.status", "reversed", "refunds.data[0].status 'reversed' is not one of"),
    (lambda: refund_created(), "payment_intent", 7, "payment_intent is not an id"),
    (lambda: charge_refunded(), "amount_refunded", 12000.5, "amount_refunded is not a non-negative integer"),
    (lambda: charge_refunded(), "refunded", "yes", "refunded is not a boolean"),
    (lambda: charge_refunded(), "refunds.data.amount", "all", "refunds.data[0].amount is not a non-negative integer"),
    (lambda: refund_created(), "amount", 2**31, "amount is beyond the largest amount coursepipe records"),
    (lambda: refund_created(), "currency", "dollars", "currency is not a three-letter currency code"),
    (lambda: dispute_created(), "amount", 10**12, "amount is beyond the largest amount coursepipe records"),
    (lambda: refund_created(), "id", None, "id is missing"),
    (lambda: refund_created(), "amount", 0, "amount is missing or zero"),
    (lambda: charge_refunded(), "refunds.data.amount", 0, "refunds.data[0].amount is missing or zero"),
    (lambda: charge_refunded(), "refunds", [], "refunds is not an object"),
    # before: read as an object, an AttributeError retried five times
    (lambda: refund_created(), "metadata", "oops", "metadata is not an object"),
    (lambda: charge_refunded(), "refunds.data.metadata", ["x"], "refunds.data[0].metadata is not an object"),
    (lambda: dispute_created(), "amount", "12000", "amount is not a non-negative integer"),
    (lambda: dispute_closed(status="needs_response"), "status", "needs_response", "closed with status"),
    (lambda: dispute_closed(status="lost"), "status", {"lost": True}, "status is not a string"),
    (lambda: dispute_created(), "evidence_details", "soon", "evidence_details is not an object"),
    (lambda: _with_evidence(dispute_created()), "evidence_details.due_by", "tomorrow",
     "evidence_details.due_by is not a non-negative integer"),
    (lambda: _with_evidence(dispute_created()), "evidence_details.due_by", 10 ** 13,
     "evidence_details.due_by is not a Unix time"),
]


def _with_evidence(event):
    event["data"]["object"]["evidence_details"] = {"due_by": 1_800_000_000, "has_evidence": False}
    return event


@pytest.mark.parametrize("make, path, value, message", MALFORMED)
def test_a_malformed_refund_charge_or_dispute_fails_at_once_and_changes_nothing(database, make, path, value,
                                                                                  message):
    """A shape Stripe never sends is failed on its first attempt with the field named, not retried or applied."""
    _purchase(database)
    before = state(database)
    event = _malformed(make(), path, value)
    result = deliver(database, event)
    assert result.outcome is inbox.Outcome.FAILED and message in result.error
    row = inbox_row(database, event)
    assert row.status == InboxStatus.FAILED and row.attempts == 1 and message in row.last_error
    assert state(database) == before
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(PaymentRefund)) == 0
    # the same event again (a redelivery), and the same facts under a new event id: the same answer
    assert deliver(database, event).outcome is inbox.Outcome.SKIPPED
    again = _malformed(make(), path, value)
    assert deliver(database, again).outcome is inbox.Outcome.FAILED and inbox_row(database, again).attempts == 1
    assert state(database) == before


def _alerts(database) -> list[OutboxMessage]:
    with database.session_scope() as s:
        return list(s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "refund_failed_alert")))


def _refund_status(database, refund_id="re_1"):
    with database.session_scope() as s:
        return s.scalar(select(PaymentRefund.status).where(PaymentRefund.refund_key == refund_id))


def test_a_counted_refund_that_fails_later_alerts_the_admins_once_and_undoes_nothing(database):
    """The student was revoked by a refund that Stripe then failed: the studio must be told, once."""
    from tasks.messaging import mail

    _purchase(database)
    assert deliver(database, refund_created(status="pending")).outcome is inbox.Outcome.PROCESSED
    revoked = state(database)
    assert revoked["enrollments"][0]["status"] == "revoked" and _refund_status(database) == "pending"

    failed = refund_created(status="failed")
    failed["type"] = "refund.updated"
    failed["data"]["object"]["failure_reason"] = "expired_or_canceled_card"
    assert deliver(database, failed).outcome is inbox.Outcome.PROCESSED
    assert _refund_status(database) == "failed"
    assert state(database) == revoked  # what the refund took back stays taken back
    (alert,) = _alerts(database)
    assert alert.recipient == "@admins" and alert.channel == "mail"
    rendered = mail.render("refund_failed_alert", alert.payload["context"])
    assert "re_1" in rendered.subject and "failed" in rendered.subject and "SFZ" in rendered.subject
    assert "stu_1" in rendered.text and "expired_or_canceled_card" in rendered.text and "revoked" in rendered.text

    again = refund_created(status="failed")  # the same news under another event id (charge.refund.updated)
    again["type"] = "charge.refund.updated"
    assert deliver(database, again).outcome is inbox.Outcome.IGNORED
    stale = refund_created(status="succeeded")  # an older event arriving late does not revive it
    stale["type"] = "refund.updated"
    deliver(database, stale)
    assert _refund_status(database) == "failed" and len(_alerts(database)) == 1 and state(database) == revoked


def test_a_failed_refund_listed_by_charge_refunded_alerts_once(database):
    _purchase(database)
    deliver(database, charge_refunded(refunded=6000, refunds=[("re_1", 6000)]))  # partial: counted
    listed = charge_refunded(refunded=6000, refunds=[("re_1", 6000)])
    listed["data"]["object"]["refunds"]["data"][0]["status"] = "failed"
    assert deliver(database, listed).outcome is inbox.Outcome.PROCESSED
    assert _refund_status(database) == "failed" and len(_alerts(database)) == 1


def test_a_pending_refund_that_succeeds_is_counted_once(database):
    _purchase(database)
    deliver(database, refund_created(amount=6000, status="pending"))
    after_pending = state(database)
    succeeded = refund_created(amount=6000, status="succeeded")
    succeeded["type"] = "refund.updated"
    assert deliver(database, succeeded).outcome is inbox.Outcome.PROCESSED
    assert _refund_status(database) == "succeeded" and state(database) == after_pending and not _alerts(database)


def test_a_failed_refund_parked_before_its_purchase_is_recorded_when_the_purchase_arrives(database):
    """Failed, then its older pending copy, both before the purchase: the purchase wakes both; nothing counts."""
    _catalog(database)
    failed = refund_created(status="failed")
    assert deliver(database, failed).outcome is inbox.Outcome.WAITING
    assert deliver(database, checkout(cs="cs_1", pi="pi_1")).outcome is inbox.Outcome.PROCESSED
    assert inbox_row(database, failed).status == InboxStatus.PROCESSED
    assert deliver(database, refund_created(status="pending")).outcome is inbox.Outcome.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "active" and _refund_status(database) == "failed"
    assert not _alerts(database)


def test_a_value_the_database_cannot_hold_fails_at_once_not_retried(pg_database):
    """PostgreSQL refuses a charge id of 100 characters (varchar(64)): a DataError is the same on every attempt."""
    _purchase(pg_database)
    before = state(pg_database)
    event = refund_created(amount=6000)
    event["data"]["object"]["charge"] = "ch_" + "x" * 97
    result = deliver(pg_database, event)
    assert result.outcome is inbox.Outcome.FAILED and "value too long" in result.error
    row = inbox_row(pg_database, event)
    assert row.status == InboxStatus.FAILED and row.attempts == 1 and row.last_error.startswith("DataError")
    assert state(pg_database) == before


def _failed(status="failed", type_="refund.updated", **kw):
    event = refund_created(status=status, **kw)
    event["type"] = type_
    return event


@pytest.mark.parametrize("charge_first", [True, False])
def test_failed_through_charge_refunded_and_through_refund_updated_alerts_once_either_order(database, charge_first):
    _purchase(database)
    deliver(database, refund_created(status="succeeded"))  # full: counted, revoked
    listed = charge_refunded(refunds=[("re_1", COURSE_PRICE)])
    listed["data"]["object"]["refunds"]["data"][0]["status"] = "failed"
    for event in ([listed, _failed()] if charge_first else [_failed(), listed]):
        deliver(database, event)
    assert _refund_status(database) == "failed" and len(_alerts(database)) == 1


def test_a_canceled_refund_counts_like_a_failed_one(database):
    _purchase(database)
    deliver(database, refund_created(amount=6000, status="pending"))
    partial = state(database)
    assert deliver(database, _failed(status="canceled", amount=6000)).outcome is inbox.Outcome.PROCESSED
    assert _refund_status(database) == "canceled" and len(_alerts(database)) == 1 and state(database) == partial


def test_a_package_refund_failing_after_it_was_counted_alerts_without_a_course(database):
    from tasks.messaging import mail

    with database.session_scope() as s:
        s.add(CreditPackage(code="P5", title="P5 pack", price_amount=5000, credit_type=CreditType.GROUP, quantity=5))
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P5", amount=5000))
    deliver(database, refund_created(pi="pi_p", amount=5000))
    refunded = state(database)
    assert refunded["packages"][0]["status"] == "refunded"
    deliver(database, _failed(pi="pi_p", amount=5000))
    assert state(database) == refunded
    (alert,) = _alerts(database)
    context = alert.payload["context"]
    assert context["course_code"] is None and context["package_purchase_id"] and context["enrollment_id"] is None
    assert "Package purchase" in mail.render("refund_failed_alert", context).text


def test_failed_and_its_pending_copy_both_parked_before_the_purchase_count_nothing(database):
    """Both wait for the purchase, which wakes them in arrival order: the failure is kept first, so the
    older pending copy counts nothing (the student keeps the course, nothing to alert)."""
    _catalog(database)
    assert deliver(database, _failed()).outcome is inbox.Outcome.WAITING
    assert deliver(database, refund_created(status="pending")).outcome is inbox.Outcome.WAITING
    deliver(database, checkout(cs="cs_1", pi="pi_1"))
    assert state(database)["enrollments"][0]["status"] == "active" and _refund_status(database) == "failed"
    assert not _alerts(database)


def test_expanded_payment_intent_and_charge_are_read_as_their_ids_twice_and_before_the_purchase(database):
    """An expanded reference (the object in place of its id) is the same payment: one subject, one refund,
    one dispute — also when it arrives before the purchase and when delivered twice."""
    from db.models import PaymentDispute
    from tasks.events import stripe_subject

    _catalog(database)
    refund = refund_created(refund_id="re_x", amount=3000, pi={"id": "pi_1", "object": "payment_intent"},
                            charge={"id": "ch_1", "object": "charge"})
    dispute = dispute_created(pi={"id": "pi_1", "object": "payment_intent"}, charge={"id": "ch_1", "object": "charge"})
    assert stripe_subject(refund["type"], refund["data"]["object"]) == "payment:pi_1"
    assert stripe_subject(dispute["type"], dispute["data"]["object"]) == "payment:pi_1"
    assert deliver(database, refund).outcome is inbox.Outcome.WAITING  # waits for payment:pi_1
    assert deliver(database, checkout(cs="cs_1", pi="pi_1")).outcome is inbox.Outcome.PROCESSED
    assert inbox_row(database, refund).status == InboxStatus.PROCESSED
    deliver(database, refund_created(refund_id="re_x", amount=3000, pi={"id": "pi_1"}, charge={"id": "ch_1"}))
    for _ in range(2):
        deliver(database, dispute)
    with database.session_scope() as s:
        assert [(r.refund_key, r.stripe_charge_id, r.stripe_payment_intent_id) for r in s.scalars(
            select(PaymentRefund))] == [("re_x", "ch_1", "pi_1")]
        assert [(d.stripe_dispute_id, d.stripe_charge_id) for d in s.scalars(select(PaymentDispute))] \
            == [("dp_1", "ch_1")]
    enrollment = state(database)["enrollments"][0]
    assert enrollment["refunded"] == 3000 and enrollment["status"] == "suspended"


@pytest.mark.parametrize(("amount", "refunded"), [(COURSE_PRICE, COURSE_PRICE), (6000, 6000)],
                         ids=["full", "partial"])
def test_an_older_charge_refunded_after_the_failure_does_not_count_the_failed_refund(database, amount, refunded):
    _purchase(database)
    assert deliver(database, _failed(amount=amount)).outcome is inbox.Outcome.PROCESSED
    # Stripe's snapshot from before the failure: re_1 still succeeded, its amount in the cumulative figure
    deliver(database, charge_refunded(refunded=refunded, refunds=[("re_1", amount)]))
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "active" and enrollment["refunded"] == 0
    assert enrollment["lots"] == [("group", 1, 1), ("private", 4, 4)]


def test_a_charge_refunded_listing_the_failure_and_another_refund_counts_only_the_other(database):
    _purchase(database)
    deliver(database, _failed(amount=3000))
    charge = charge_refunded(refunded=6000, refunds=[("re_1", 3000), ("re_2", 6000)])
    charge["data"]["object"]["refunds"]["data"][0]["status"] = "failed"  # after the failure: not in the 6000
    deliver(database, charge)
    assert state(database)["enrollments"][0]["refunded"] == 6000
