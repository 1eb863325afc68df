"""Disputes: opened → suspended + admin alert; won → reinstated; lost → revoked; in any order, twice."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.enums import BundleKind, InboxStatus
from db.models import OutboxMessage, PaymentDispute
from tasks.messaging import mail
from tests import inbox_api as inbox
from tests import factories
from tests.tasks.purchases.payments_support import (
    charge_refunded,
    checkout,
    deliver,
    dispute_closed,
    dispute_created,
    inbox_row,
    refund_created,
    state,
)


def _purchase(database, cs="cs_1", pi="pi_1"):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    assert deliver(database, checkout(cs=cs, pi=pi)).outcome is inbox.Outcome.PROCESSED


def _topics(database) -> list[tuple[str, str | None]]:
    with database.session_scope() as s:
        return sorted((m.topic, m.recipient) for m in s.scalars(select(OutboxMessage)))


def test_dispute_created_suspends_and_alerts_admins_once(database):
    _purchase(database)
    event = dispute_created()
    assert deliver(database, event).outcome is inbox.Outcome.PROCESSED
    after = state(database)
    enrollment = after["enrollments"][0]
    assert enrollment["status"] == "suspended"
    assert enrollment["steps"] == ["unbooked"] * 3 and enrollment["lots"] == [("private", 2, 2)]  # kept
    assert after["disputes"] == [("dp_1", "open")]
    with database.session_scope() as s:
        alert = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "dispute_alert"))
        assert alert.recipient == "@admins"
        assert alert.payload["context"]["course_code"] == "SFZ"
        assert alert.payload["context"]["dispute_id"] == "dp_1"
        suspended = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment.suspended"))
        assert suspended.payload["data"]["status"] == "suspended"
    topics = _topics(database)
    assert deliver(database, event).outcome is inbox.Outcome.SKIPPED
    assert deliver(database, dispute_created()).outcome is inbox.Outcome.PROCESSED  # same dispute, new event id
    assert state(database) == after and _topics(database) == topics


def test_the_dispute_alert_of_a_three_decimal_currency_names_the_amount_disputed(database):
    """Stripe counts KWD in thousandths (fils): a dispute of 12500 is of 12.500 KWD, not 125.00."""
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),), price=12500)
    sale = checkout(amount=12500)
    sale["data"]["object"]["currency"] = "kwd"
    assert deliver(database, sale).outcome is inbox.Outcome.PROCESSED
    dispute = dispute_created(amount=12500)
    dispute["data"]["object"]["currency"] = "kwd"
    assert deliver(database, dispute).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        alert = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "dispute_alert"))
        text = mail.render("dispute_alert", alert.payload["context"]).text
    assert "12.500 KWD" in text and "125.00" not in text


def test_dispute_won_reinstates(database):
    _purchase(database)
    deliver(database, dispute_created())
    deliver(database, dispute_closed(status="won"))
    after = state(database)
    assert after["enrollments"][0]["status"] == "active" and after["disputes"] == [("dp_1", "won")]
    assert after["balances"] == {"group": 0, "private": 2}
    assert ("enrollment.reinstated", None) in _topics(database)
    deliver(database, dispute_closed(status="won"))  # twice
    assert state(database) == after


def test_dispute_lost_revokes(database):
    _purchase(database)
    deliver(database, dispute_created())
    deliver(database, dispute_closed(status="lost"))
    after = state(database)
    enrollment = after["enrollments"][0]
    assert enrollment["status"] == "revoked" and enrollment["steps"] == ["cancelled"] * 3
    assert after["balances"] == {"group": 0, "private": 0} and after["disputes"] == [("dp_1", "lost")]
    with database.session_scope() as s:
        revoked = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment.revoked"))
        assert revoked.payload["data"]["reason"] == "dispute_lost"
    deliver(database, dispute_closed(status="lost"))
    deliver(database, dispute_closed(status="won"))  # a closed dispute does not change its outcome
    assert state(database) == after


def test_wrong_order_closed_before_created_never_suspends(database):
    _purchase(database)
    deliver(database, dispute_closed(status="won"))
    deliver(database, dispute_created())
    after = state(database)
    assert after["enrollments"][0]["status"] == "active" and after["disputes"] == [("dp_1", "won")]
    with database.session_scope() as s:  # and no admin is alerted to answer a dispute already closed
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.topic == "dispute_alert")) == 0


def test_wrong_order_dispute_before_purchase_waits(database):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    early = dispute_created(pi="pi_e")
    assert deliver(database, early).outcome is inbox.Outcome.WAITING
    assert inbox_row(database, early).waiting_for == "payment:pi_e"
    deliver(database, checkout(cs="cs_e", pi="pi_e"))
    assert inbox_row(database, early).status == InboxStatus.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "suspended"


def test_a_won_dispute_does_not_undo_a_full_refund(database):
    _purchase(database)
    deliver(database, dispute_created())
    deliver(database, charge_refunded())
    deliver(database, dispute_closed(status="won"))
    assert state(database)["enrollments"][0]["status"] == "revoked"
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(PaymentDispute)) == 1


def test_a_course_finished_while_suspended_is_completed_when_reinstated(database):
    from db.enums import ProgressStatus
    from db.models import StudentCourseProgress

    _purchase(database)
    deliver(database, dispute_created())
    with database.session_scope() as s:
        for row in s.scalars(select(StudentCourseProgress)):
            row.status = ProgressStatus.COMPLETED
    deliver(database, dispute_closed(status="won"))
    assert state(database)["enrollments"][0]["status"] == "completed"


def test_a_dispute_closed_with_an_open_status_fails_and_leaves_the_student_suspended(database):
    _purchase(database)
    deliver(database, dispute_created())
    before = state(database)
    event = dispute_closed(status="needs_response")
    for _ in range(2):  # and delivered twice
        result = deliver(database, event)
    assert inbox_row(database, event).status == InboxStatus.FAILED and "closed with status" in \
        inbox_row(database, event).last_error
    assert result.outcome is inbox.Outcome.SKIPPED
    assert state(database) == before and before["enrollments"][0]["status"] == "suspended"


@pytest.mark.parametrize("closed", ["warning_closed", "prevented"])
def test_a_dispute_closed_without_a_chargeback_counts_as_won(database, closed):
    """`warning_closed` (an inquiry that never became a chargeback) and `prevented` (resolved early by the card
    network, the money returned by a refund Stripe reports on its own) take nothing away."""
    _purchase(database)
    deliver(database, dispute_created())
    assert deliver(database, dispute_closed(status=closed)).outcome is inbox.Outcome.PROCESSED
    after = state(database)
    assert after["enrollments"][0]["status"] == "active" and after["disputes"] == [("dp_1", "won")]


def _reinstate_by_hand(database):
    from db.models import StudentCourseEnrollment
    from tasks.purchases import manual

    with database.session_scope() as s:
        enrollment_id = s.scalar(select(StudentCourseEnrollment.id))
        manual.reinstate(session=s, enrollment_id=enrollment_id, cause="admin:1")


def _status_events(database) -> list[str]:
    with database.session_scope() as s:
        return list(s.scalars(select(OutboxMessage.topic).where(
            OutboxMessage.topic.in_(("enrollment.suspended", "enrollment.reinstated", "enrollment.revoked")))
            .order_by(OutboxMessage.id)))


def test_an_admin_reinstatement_during_an_open_dispute_stands_through_its_later_events(database):
    """Before: the dispute's next payment event (here a partial refund, then a redelivered `created`) suspended the
    enrollment again, silently (the suspension's event had been sent once already), so the platform's last word
    said active while the student could no longer book."""
    _purchase(database)
    deliver(database, dispute_created())
    _reinstate_by_hand(database)
    assert deliver(database, refund_created(refund_id="re_1", amount=1000)).outcome is inbox.Outcome.PROCESSED
    assert deliver(database, dispute_created(event_id="evt_dp_again")).outcome is inbox.Outcome.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "active"
    assert _status_events(database) == ["enrollment.suspended", "enrollment.reinstated"]


def test_an_admin_reinstatement_from_revoked_stands_over_a_dispute_delivered_while_revoked(database):
    """The dispute opened before an admin's revocation, its webhook came after it (nothing to suspend), then the
    admin reinstated. Before: the dispute's next payment event suspended the enrollment, as if the admin had not
    decided with it open; delivered before the revocation, it left the reinstatement standing."""
    from db.models import StudentCourseEnrollment
    from tasks.purchases import manual

    _purchase(database)
    with database.session_scope() as s:
        manual.revoke(session=s, enrollment_id=s.scalar(select(StudentCourseEnrollment.id)), cause="admin:0")
    assert deliver(database, dispute_created()).outcome is inbox.Outcome.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "revoked"
    _reinstate_by_hand(database)
    assert deliver(database, refund_created(refund_id="re_1", amount=1000)).outcome is inbox.Outcome.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "active"
    assert _status_events(database) == ["enrollment.revoked", "enrollment.reinstated"]
    deliver(database, dispute_created(dispute="dp_2", event_id="evt_dp_2"))  # one opened after: it suspends
    assert state(database)["enrollments"][0]["status"] == "suspended"


def test_a_new_dispute_after_an_admin_reinstatement_suspends_again(database):
    _purchase(database)
    deliver(database, dispute_created())
    _reinstate_by_hand(database)
    deliver(database, dispute_created(dispute="dp_2", event_id="evt_dp_2"))
    assert state(database)["enrollments"][0]["status"] == "suspended"
    assert _status_events(database) == ["enrollment.suspended", "enrollment.reinstated", "enrollment.suspended"]


def test_a_dispute_lost_after_an_admin_reinstatement_still_revokes(database):
    _purchase(database)
    deliver(database, dispute_created())
    _reinstate_by_hand(database)
    deliver(database, dispute_closed(status="lost"))
    assert state(database)["enrollments"][0]["status"] == "revoked"
    assert _status_events(database) == ["enrollment.suspended", "enrollment.reinstated", "enrollment.revoked"]
