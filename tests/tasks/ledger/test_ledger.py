"""The credit ledger's services, called directly: append-only entries keyed by their cause; balances are
sums; a repeat of any cause adds nothing."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from db.enums import CreditType, EnrollmentStatus, LedgerEntryType
from db.models import CreditLedgerEntry
from db.types import utcnow
from tasks.ledger import credits
from tasks.ledger.causes import ENROLLMENT_OWNER, Cause, CauseKind, Keys
from tests import factories


def _entries(session) -> int:
    return session.scalar(select(func.count()).select_from(CreditLedgerEntry))


def test_a_cause_reads_back_as_it_was_written_and_an_unknown_one_is_other():
    for cause in (Cause.bundle(5), Cause.package(7), Cause.booking("bk_1"), Cause.adjustment("a1"),
                  Cause.revocation(ENROLLMENT_OWNER, 5), Cause.partial_refund(ENROLLMENT_OWNER, 5)):
        assert Cause.parse(str(cause)) == cause
    assert str(Cause.partial_refund(ENROLLMENT_OWNER, 5)) == "partial-refund:enrollment:5"
    assert Cause.parse("something-new:1").kind is CauseKind.OTHER
    reinstated = Cause.reinstatement(5, "admin:ops@example.test")
    assert str(reinstated) == "reinstatement:enrollment:5:admin:ops@example.test"
    assert Cause.parse(str(reinstated)) == reinstated and reinstated.owner == (ENROLLMENT_OWNER, 5)
    assert Cause.package(7).owner == ("package_purchase", 7) and Cause.booking("bk_1").owner is None
    assert Keys.grant(Cause.bundle(5), CreditType.PRIVATE) == "grant:enrollment:5:private"


def test_a_grant_is_one_lot_per_cause_and_type_and_balances_are_sums(session):
    student = factories.student(session)
    first = credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.GROUP,
                                  quantity=3, cause=Cause.adjustment("welcome"))
    again = credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.GROUP,
                                  quantity=3, cause=Cause.adjustment("welcome"))
    credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.PRIVATE, quantity=1,
                          cause=Cause.adjustment("welcome"))
    session.flush()
    assert again.id == first.id and _entries(session) == 2
    assert credits.balances(session=session, student_id=student.id) == {"group": 3, "private": 1}


def test_spending_takes_the_soonest_expiring_lot_once_per_booking_and_a_release_gives_it_back(session):
    student = factories.student(session)
    later = credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.GROUP, quantity=1,
                                  cause=Cause.adjustment("later"), expires_at=utcnow() + timedelta(days=30))
    sooner = credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.GROUP, quantity=1,
                                   cause=Cause.adjustment("sooner"), expires_at=utcnow() + timedelta(days=2))
    session.flush()
    spent = credits.consume_credit(session=session, student_id=student.id, credit_type=CreditType.GROUP,
                                   booking_id="bk_1")
    assert spent.grant_id == sooner.id and spent.cause == "booking:bk_1"
    assert credits.consume_credit(session=session, student_id=student.id, credit_type=CreditType.GROUP,
                                  booking_id="bk_1").id == spent.id  # the same booking twice: one entry
    assert credits.balances(session=session, student_id=student.id)["group"] == 1
    released = credits.release_credit(session=session, booking_id="bk_1")
    assert released.entry_type is LedgerEntryType.RELEASE and released.grant_id == sooner.id
    assert credits.release_credit(session=session, booking_id="bk_1").id == released.id
    assert credits.balances(session=session, student_id=student.id)["group"] == 2
    assert later.id != sooner.id


def test_no_credit_left_is_refused(session):
    student = factories.student(session)
    with pytest.raises(credits.NoCredit):
        credits.consume_credit(session=session, student_id=student.id, credit_type=CreditType.PRIVATE,
                               booking_id="bk_9")


def test_a_release_after_a_full_revocation_is_taken_back_but_after_a_partial_refund_stays(session):
    student = factories.student(session)
    for kind, status, usable in ((Cause.revocation, EnrollmentStatus.REVOKED, 0),
                                 (Cause.partial_refund, EnrollmentStatus.ACTIVE, 1)):
        enrollment = factories.enrollment(session, student, factories.program(session, code=f"C{status.value}"),
                                          status=status, session_id=f"cs_{status.value}")
        cause = kind(ENROLLMENT_OWNER, enrollment.id)
        grant = credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.PRIVATE,
                                      quantity=2, cause=Cause.adjustment(f"lot-{cause.kind.value}"),
                                      enrollment_id=enrollment.id)
        session.flush()
        booking = f"bk_{cause.kind.value}"
        credits.consume_credit(session=session, student_id=student.id, credit_type=CreditType.PRIVATE,
                               booking_id=booking)
        credits.revoke_from_lot(session=session, grant=grant, quantity=1,
                                key=Keys.revoke_share(cause, grant.id, 1), cause=cause)
        credits.release_credit(session=session, booking_id=booking)
        session.flush()
        lot = next(lot for lot in credits.lots(session=session, student_id=student.id) if lot.grant.id == grant.id)
        assert lot.remaining == usable, cause
