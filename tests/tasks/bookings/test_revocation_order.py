"""A refund processed before a booking's cancellation or attendance: the final state does not depend on the order."""
from __future__ import annotations

import pytest

from sqlalchemy import select

from db.enums import BundleKind, ProgressStatus
from db.models import StudentCourseEnrollment
from tests import inbox_api as inbox
from tasks.enrollments.services import revoke
from tests import factories
from tests.tasks.purchases import payments_support
from tests.tasks.bookings.bookings_support import (
    World,
    at,
    attendance,
    booking,
    booking_cancelled,
    booking_created,
    class_upserted,
    deliver,
    enrollment_status,
    inbox_row,
    progress,
    rejections,
    run,
    store,
    world,
)


def _revoke(database, w):
    with database.session_scope() as s:
        revoke(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id), cause="refund:re_1",
               reason="refunded")


def _history(database, w, order, outcome_event):
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0]))
    for step in order:
        result = _revoke(database, w) if step == "revoke" else deliver(database, outcome_event)
        assert result is None or result.outcome.value == "processed", result


@pytest.mark.parametrize("order", [("outcome", "revoke"), ("revoke", "outcome")])
@pytest.mark.parametrize("outcome,expected", [
    ("attended", ProgressStatus.COMPLETED),  # an attended class stays on record
    ("no_show", None),  # missed, then cancelled by the revocation / cancelled, the no-show changes nothing
    ("cancel", ProgressStatus.CANCELLED),
])
def test_revocation_and_booking_outcome_in_either_order(database, order, outcome, expected):
    w = world(database)
    event = booking_cancelled("bk_1") if outcome == "cancel" else attendance("bk_1", outcome)
    _history(database, w, order, event)
    status = progress(database, w, 1)["status"]
    if expected is None:  # missed is an open step: the revocation cancels it; cancelled stays cancelled
        expected = ProgressStatus.CANCELLED
    assert status == expected
    # the same outcome again, as a new platform event (a re-send with a fresh id), changes nothing
    deliver(database, {**event, "id": event["id"] + "-again"})
    assert progress(database, w, 1)["status"] == expected


# --------------------------------------------------------------------------- several bookings of one step, a refund


def _purchased(database) -> World:
    """A course bought through Stripe (so a real `charge.refunded` revokes it); two classes per step."""
    with database.session_scope() as s:
        factories.student(s, id="stu_1", email="stu_1@example.test")
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),), options_per_step=2)
        step_ids = [step.id for step in program.steps]
    assert payments_support.deliver(database, payments_support.checkout()).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        enrollment.activated_at = at(-60)  # bought an hour before the bookings below (their times are fixed)
        enrollment_id = enrollment.id
    return World("stu_1", None, enrollment_id, step_ids)


def _full_refund(database) -> None:
    result = payments_support.deliver(database, payments_support.charge_refunded())
    assert result.outcome is inbox.Outcome.PROCESSED, result


def _ok(result: inbox.Result) -> inbox.Result:
    assert result.outcome in (inbox.Outcome.PROCESSED, inbox.Outcome.WAITING), result
    return result


def _final(database, w: World) -> tuple:
    """Step 1 (status, booking), both bookings' statuses, the rejections sent, the enrollment's status."""
    row = progress(database, w, 1)
    return ((row["status"], row["booking_id"]), {b: booking(database, b).status.value for b in ("bk_1", "bk_2")},
            rejections(database), enrollment_status(database, w))


def _bookings(w: World) -> tuple[dict, dict]:
    return (booking_created("bk_1", w.option(1, 0), step_id=w.step_ids[0], when=at(0)),
            booking_created("bk_2", w.option(1, 1), step_id=w.step_ids[0], when=at(20)))


def test_a_rebooking_of_a_missed_step_delivered_after_the_refund_holds_the_step(database):
    """b1 booked, cancelled outside policy; b2 booked and attended; refunded. The refund arrives before b2."""
    w = _purchased(database)
    b1, b2 = _bookings(w)
    _ok(deliver(database, b1))
    _ok(deliver(database, booking_cancelled("bk_1", within_policy=False, when=at(10))))
    _full_refund(database)
    _ok(deliver(database, b2))
    _ok(deliver(database, attendance("bk_2", "attended", when=at(60))))
    assert _final(database, w) == ((ProgressStatus.COMPLETED, "bk_2"), {"bk_1": "cancelled", "bk_2": "attended"},
                                   {}, "revoked")


def test_a_rebooking_delivered_before_the_cancel_it_followed_waits_for_it_after_the_refund(database):
    """b1 booked, cancelled within policy; b2 booked; refunded. Delivered: refund, b1, b2, b1's cancel."""
    w = _purchased(database)
    b1, b2 = _bookings(w)
    _full_refund(database)
    _ok(deliver(database, b1))
    _ok(deliver(database, b2))
    assert inbox_row(database, b2).status.value == "waiting"  # b1 still holds the step: its end is in flight
    _ok(deliver(database, booking_cancelled("bk_1", within_policy=True, when=at(10))))
    assert _final(database, w) == ((ProgressStatus.CANCELLED, "bk_2"), {"bk_1": "cancelled", "bk_2": "active"},
                                   {}, "revoked")


def test_a_rebooking_woken_by_a_no_show_runs_after_the_refund_and_holds_the_step(database):
    """b1 no-show; b2 booked (waits for the no-show), attended; the refund commits before the woken b2 runs."""
    w = _purchased(database)
    b1, b2 = _bookings(w)
    _ok(deliver(database, b1))
    assert deliver(database, b2).outcome is inbox.Outcome.WAITING
    with database.session_scope() as s:  # the no-show commits; the booking it wakes has not run yet
        woken = inbox.process_event(session=s, inbox_id=store(database, attendance("bk_1", "no_show", when=at(10)))
                                    ).woken
    assert woken
    _full_refund(database)  # another subject, another worker: it commits first
    for inbox_id in woken:
        _ok(run(database, inbox_id))
    _ok(deliver(database, attendance("bk_2", "attended", when=at(60))))
    assert _final(database, w) == ((ProgressStatus.COMPLETED, "bk_2"), {"bk_1": "no_show", "bk_2": "attended"},
                                   {}, "revoked")


@pytest.mark.parametrize("refund_first", [False, True])
def test_a_missed_step_rebooked_ends_the_same_in_real_order_and_with_the_refund_delivered_first(database,
                                                                                                refund_first):
    """History 1 in real order (the reference), and with the refund delivered before all of it."""
    w = _purchased(database)
    b1, b2 = _bookings(w)
    if refund_first:
        _full_refund(database)
    for event in (b1, booking_cancelled("bk_1", within_policy=False, when=at(10)), b2,
                  attendance("bk_2", "attended", when=at(60))):
        _ok(deliver(database, event))
    if not refund_first:
        _full_refund(database)
    assert _final(database, w) == ((ProgressStatus.COMPLETED, "bk_2"), {"bk_1": "cancelled", "bk_2": "attended"},
                                   {}, "revoked")


@pytest.mark.parametrize("refund_first", [False, True])
def test_a_class_cancelled_after_the_refund_releases_the_cancelled_step_as_in_order(database, refund_first):
    """b1 booked; its class cancelled; refunded. In order the class reopens the step, the refund cancels it
    naming no booking; the class cancellation processed after the refund leaves the same."""
    w = _purchased(database)
    b1, _ = _bookings(w)
    _ok(deliver(database, b1))
    if refund_first:
        _full_refund(database)
    _ok(deliver(database, class_upserted(w.option(1, 0), status="cancelled", when=at(10))))
    if not refund_first:
        _full_refund(database)
    row = progress(database, w, 1)
    assert (row["status"], row["booking_id"], row["group_class_id"]) == (ProgressStatus.CANCELLED, None, None)
    assert booking(database, "bk_1").status.value == "cancelled" and rejections(database) == {}
