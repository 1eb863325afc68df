"""The state machines: every status change goes through a table of allowed moves; the first line of a
row's history is written by `StateMachine.begin`, every later one by `move`."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.enums import DisputeStatus, InboxSource, InboxStatus, PurchaseStatus, RefundStatus
from db.models import InboxEvent, TransitionLog
from tasks.errors import IllegalTransition
from tasks.inbox import admin as inbox_admin
from tasks.inbox.store import store_event
from tasks.machines import DISPUTE, INBOX, PACKAGE_PURCHASE, REFUND
from tests.tasks.purchases.payments_support import checkout, deliver, refund_created
from tests.tasks.purchases.test_fulfilment import _package


def test_refunds_move_forward_only_and_failed_or_canceled_is_final():
    assert REFUND.can(RefundStatus.PENDING, RefundStatus.SUCCEEDED)
    assert REFUND.can(RefundStatus.SUCCEEDED, RefundStatus.FAILED)  # Stripe: a refund may fail after it went through
    assert not REFUND.can(RefundStatus.SUCCEEDED, RefundStatus.PENDING)  # an older copy arriving late
    assert not REFUND.can(RefundStatus.FAILED, RefundStatus.SUCCEEDED)
    assert not REFUND.can(RefundStatus.CANCELED, RefundStatus.PENDING)


def test_a_closed_dispute_never_reopens_and_a_refunded_package_stays_refunded():
    assert DISPUTE.sources(DisputeStatus.LOST) == (DisputeStatus.OPEN,)
    assert not DISPUTE.can(DisputeStatus.WON, DisputeStatus.OPEN)
    assert PACKAGE_PURCHASE.can(PurchaseStatus.FAILED, PurchaseStatus.PAID)
    assert not PACKAGE_PURCHASE.can(PurchaseStatus.REFUNDED, PurchaseStatus.PAID)


def test_inbox_rows_move_by_the_table_and_a_processed_row_is_final(database):
    with database.session_scope() as s:
        inbox_id = store_event(session=s, source=InboxSource.PLATFORM, event_id="pev_m1", type="student.upserted",
                               payload={}, subject=None, occurred_at=None).id
    with database.session_scope() as s:
        event = s.get(InboxEvent, inbox_id)
        assert INBOX.move(event, InboxStatus.PROCESSED, session=s) is True
        with pytest.raises(IllegalTransition):
            INBOX.move(event, InboxStatus.PENDING, session=s)
        assert INBOX.move(event, InboxStatus.PROCESSED, session=s) is False  # re-applied: a no-op
    assert set(INBOX.sources(InboxStatus.PENDING)) == {InboxStatus.PROCESSING, InboxStatus.WAITING,
                                                       InboxStatus.FAILED, InboxStatus.IGNORED}
    with pytest.raises(inbox_admin.NotReplayable):
        with database.session_scope() as s:
            inbox_admin.replay(session=s, inbox_id=inbox_id)
    with database.session_scope() as s:  # inbox moves are too many to log: the table guards them, nothing more
        assert s.scalars(select(TransitionLog).where(TransitionLog.entity == "inbox_event")).all() == []


def _history(database, entity: str) -> list[tuple]:
    with database.session_scope() as s:
        return [(r.from_status, r.to_status) for r in s.scalars(
            select(TransitionLog).where(TransitionLog.entity == entity).order_by(TransitionLog.id))]


def test_a_package_purchase_begins_pending_and_its_moves_are_logged(database):
    _package(database)
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000, payment_status="unpaid"))
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000, event_id="evt_p2",
                               type_="checkout.session.async_payment_succeeded"))
    assert _history(database, "package_purchase") == [(None, "pending"), ("pending", "paid")]


def test_a_refund_begins_in_stripes_status_and_logs_its_later_moves(database):
    _package(database)
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000))
    deliver(database, refund_created(refund_id="re_1", pi="pi_p", amount=500, status="pending"))
    deliver(database, refund_created(refund_id="re_1", pi="pi_p", amount=500, status="succeeded",
                                     event_id="evt_re_1b"))
    deliver(database, refund_created(refund_id="re_1", pi="pi_p", amount=500, status="pending",
                                     event_id="evt_re_1c"))  # an older copy, late: nothing
    assert _history(database, "refund") == [(None, "pending"), ("pending", "succeeded")]


def test_moves_written_by_one_statement_are_checked_and_logged_in_one_insert(database):
    from db.enums import OutboxStatus
    from tasks.machines import OUTBOX
    from db.types import utcnow

    now = utcnow()
    with pytest.raises(IllegalTransition):
        with database.session_scope() as s:
            OUTBOX.log_moves(s, [(1, OutboxStatus.PENDING, OutboxStatus.SENDING, "attempt 1", None),
                                 (2, OutboxStatus.SENT, OutboxStatus.PENDING, "no", None)], at=now)
    assert _history(database, "outbox") == []  # nothing written
    with database.session_scope() as s:
        OUTBOX.log_moves(s, [(1, OutboxStatus.PENDING, OutboxStatus.SENDING, "attempt 1", 7),
                             (2, OutboxStatus.SENDING, OutboxStatus.SENT, "attempt 1", None)], at=now)
    assert _history(database, "outbox") == [("pending", "sending"), ("sending", "sent")]
    with database.session_scope() as s:
        INBOX.log_moves(s, [(3, InboxStatus.PROCESSING, InboxStatus.PROCESSED, None, None)], at=now)
        assert s.scalars(select(TransitionLog).where(TransitionLog.entity == "inbox_event")).all() == []  # unlogged
