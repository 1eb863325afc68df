"""A refund revoking a purchase's credits while a booking spends or gives back one of them, on PostgreSQL: the
two are serialized on the student's row (`credits.lock_student`, which both take before reading what a lot
holds), so the refund never misses a released credit nor revokes a spent one, and neither waits for the other
while holding what the other needs (the purchase row is locked FOR NO KEY UPDATE, which the ledger entry's
foreign key check passes)."""
from __future__ import annotations

import threading

from db.enums import BundleKind, CreditType
from tasks.ledger import credits
from tests import factories
from tests import inbox_api as inbox
from tests.conftest import while_held
from tests.tasks.purchases.payments_support import charge_refunded, checkout, deliver, state


def _one_credit(database) -> None:
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.GROUP_CREDIT, 1),))
    deliver(database, checkout(cs="cs_1", pi="pi_1"))


def _refund_while(database, move) -> None:
    """`move` runs in a transaction held open until the refund, delivered meanwhile, waits or has ended."""
    moved, release = threading.Event(), threading.Event()

    def hold():
        with database.session_scope() as s:
            move(s)
            moved.set()
            assert release.wait(30)

    _, refund, _ = while_held(database, hold, lambda: deliver(database, charge_refunded()).outcome, held=moved,
                              release=release)
    assert refund.result() is inbox.Outcome.PROCESSED


def test_a_credit_released_while_the_refund_runs_is_revoked(pg_database):
    database = pg_database
    _one_credit(database)
    with database.session_scope() as s:
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.GROUP, booking_id="bk_c")
    _refund_while(database, lambda s: credits.release_credit(session=s, booking_id="bk_c"))
    after = state(database)
    assert after["enrollments"][0]["status"] == "revoked"
    assert after["balances"]["group"] == 0 and after["enrollments"][0]["lots"] == [("group", 1, 0)]


def test_a_credit_spent_while_the_refund_runs_is_not_revoked_as_well(pg_database):
    database = pg_database
    _one_credit(database)
    _refund_while(database, lambda s: credits.consume_credit(session=s, student_id="stu_1",
                                                             credit_type=CreditType.GROUP, booking_id="bk_c"))
    after = state(database)
    assert after["enrollments"][0]["status"] == "revoked"
    assert after["enrollments"][0]["lots"] == [("group", 1, 0)]  # spent once, never also revoked (-1)


def test_a_release_under_the_students_lock_and_a_partial_refund_do_not_deadlock(pg_database):
    """The refund holds the enrollment and wants the student's lock, which a cancel holds while it writes the
    released credit's ledger entry, whose foreign key checks the enrollment. Before: the enrollment was locked
    FOR UPDATE, which that check waits for, and PostgreSQL aborted one of them (a deadlock); now FOR NO KEY
    UPDATE, which it does not."""
    from tests.tasks.purchases.payments_support import COURSE_PRICE, refund_created

    database = pg_database
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.GROUP_CREDIT, 2),))
    deliver(database, checkout(cs="cs_1", pi="pi_1"))
    with database.session_scope() as s:
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.GROUP, booking_id="bk_c")
    locked, release = threading.Event(), threading.Event()

    def hold_then_release():
        with database.session_scope() as s:
            credits.lock_student(s, "stu_1")
            locked.set()
            assert release.wait(30)
            credits.release_credit(session=s, booking_id="bk_c")

    half = refund_created(refund_id="re_half", amount=COURSE_PRICE // 2)
    _, refund, _ = while_held(database, hold_then_release, lambda: deliver(database, half).outcome, held=locked,
                              release=release)
    assert refund.result() is inbox.Outcome.PROCESSED
    assert state(database)["balances"]["group"] == 1  # 2 granted, the spent one back, half of 2 refunded
