"""A refund revoking a purchase's credits while a booking spends or gives back one of them, on PostgreSQL: the
two are serialized on the purchase's row (the ledger entry's foreign key to it takes a share lock, which the
refund's row lock waits for, and the other way round), so the refund never misses a released credit nor
revokes a spent one."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from db.enums import BundleKind, CreditType
from tasks.ledger import credits
from tests import factories
from tests import inbox_api as inbox
from tests.conftest import lock_waited_or_done
from tests.netutil import wait_until
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

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(hold)
        assert moved.wait(30)
        refund = pool.submit(lambda: deliver(database, charge_refunded()).outcome)
        assert wait_until(lambda: lock_waited_or_done(database, refund), timeout=30)
        release.set()
        holding.result(timeout=30)
        assert refund.result(timeout=30) is inbox.Outcome.PROCESSED


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
