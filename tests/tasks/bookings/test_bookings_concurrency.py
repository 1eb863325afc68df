"""20 concurrent booking.created for one step of one enrollment, on PostgreSQL: exactly one booked,
19 refused, each with its booking.rejected outbox row."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from db.enums import InboxStatus
from db.models import Booking, InboxEvent
from tasks import signatures
from tests import inbox_api as inbox
from tasks.bookings import services as bookings
from tasks.events import BookingCreated
from tasks.inbox.context import HandlerContext
from tests.conftest import PLATFORM_SECRET, while_held
from tests.tasks.bookings.bookings_support import (
    at, balances, booking, booking_cancelled, booking_created, class_upserted, deliver, outbox_rows, progress, rejections,
    run, store, world,
)

N = 20


def _outcome(database, w):
    with database.session_scope() as s:
        active = s.scalars(select(Booking.id).where(Booking.status == "active")).all()
        rejected = s.scalar(select(func.count()).select_from(Booking).where(Booking.status == "rejected"))
    assert len(active) == 1 and rejected == N - 1
    assert progress(database, w, 1)["booking_id"] == active[0]
    reasons = rejections(database)
    assert len(reasons) == N - 1 and set(reasons.values()) == {"step_already_booked"}
    assert active[0] not in reasons
    assert len(outbox_rows(database, "booking_confirmed")) == 1
    return active[0]


def test_twenty_concurrent_bookings_through_the_inbox(pg_database):
    database = pg_database
    w = world(database)
    # 20 clicks at the same moment, different booking ids
    ids = [store(database, booking_created(f"bk_{n:02}", w.option(1), step_id=w.step_ids[0], when=at(0)))
           for n in range(N)]
    start = threading.Barrier(N)

    def process(inbox_id):
        start.wait()
        with database.session_scope() as s:
            return inbox.process_event(session=s, inbox_id=inbox_id).outcome

    with ThreadPoolExecutor(N) as pool:
        outcomes = list(pool.map(process, ids))
    assert {o.value for o in outcomes} == {"processed"}
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(InboxEvent)
                        .where(InboxEvent.status == InboxStatus.PROCESSED)) == N
    _outcome(database, w)
    # what the relay will sign: one rejection verifies against the platform secret
    message = outbox_rows(database, "booking.rejected")[0]
    body = json.dumps({"id": str(message.id), **message.payload}).encode()
    assert signatures.verify(body, signatures.sign(body, PLATFORM_SECRET), PLATFORM_SECRET)


def test_twenty_concurrent_bookings_without_the_row_lock_the_unique_index_decides(pg_database, monkeypatch):
    """No subject lock, no enrollment lock: the guard races, and uq_booking_active_step is the last word."""
    database = pg_database
    w = world(database)
    refused_by_index = []
    insert = bookings._insert

    def counting_insert(session, booking):
        ok = insert(session, booking)
        if not ok:
            refused_by_index.append(booking.id)
        return ok

    monkeypatch.setattr(bookings, "_insert", counting_insert)
    start = threading.Barrier(N)

    def book(n):
        data = BookingCreated(booking_id=f"bk_{n:02}", student_id="stu_1", class_id=w.option(1),
                              course_step_id=w.step_ids[0])
        start.wait()
        with database.session_scope() as s:
            return bookings.record_booking(session=s, data=data, at=at(0), lock=False).status.value

    with ThreadPoolExecutor(N) as pool:
        statuses = list(pool.map(book, range(N)))
    assert sorted(statuses).count("active") == 1
    _outcome(database, w)
    assert refused_by_index  # the guard alone would have let these through


def test_a_booking_into_a_class_being_cancelled_waits_and_is_refused(pg_database):
    """The cancellation has updated the class and found no booking, and has not committed: a booking into the
    class waits for it (a shared lock on the class), then sees it cancelled, instead of landing in it unseen."""
    from datetime import datetime, timezone

    from tasks.bookings import mirrors
    from tasks.events import platform_data
    from tests.tasks.bookings.bookings_support import class_upserted

    database = pg_database
    w = world(database)
    now = datetime.now(timezone.utc)
    cancelled, release = threading.Event(), threading.Event()
    data = platform_data("class.upserted", class_upserted(w.option(1), status="cancelled", when=now)["data"])

    def cancel():
        with database.session_scope() as s:
            group_class = mirrors.upsert_class(session=s, data=data, occurred_at=now).group_class
            assert bookings.cancel_class(session=s, group_class=group_class, at=now, students={}) == []
            cancelled.set()
            assert release.wait(30)

    def book():
        with database.session_scope() as s:
            booking = bookings.record_booking(session=s, data=BookingCreated(
                booking_id="bk_1", student_id="stu_1", class_id=w.option(1), course_step_id=w.step_ids[0]), at=now)
            return booking.status.value, booking.rejection_reason

    _, booking, _ = while_held(database, cancel, book, held=cancelled, release=release)
    assert booking.result() == ("rejected", "class_cancelled")
    assert progress(database, w, 1)["status"].value == "unbooked"


# --------------------------------------------------------------------------- an admin's reinstatement and a class's cancellation


def _revoked_with_a_standing_booking(database):
    from db.models import StudentCourseEnrollment
    from tasks.purchases import manual

    w = world(database)
    with database.session_scope() as s:
        s.get(StudentCourseEnrollment, w.enrollment_id).activated_at = at(-60)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0)))
    with database.session_scope() as s:
        manual.revoke(session=s, enrollment_id=w.enrollment_id, cause="admin:1")
    assert (progress(database, w, 1)["status"].value, booking(database, "bk_1").status.value) == \
        ("cancelled", "active")
    return w


def test_a_reinstatement_crossing_a_class_cancellation_leaves_the_step_open_and_bookable(pg_database):
    """Before: the class's cancellation (holding the step's row, not the enrollment) cleared the cancelled step's
    booking; the reinstatement, which had read the booking standing, then moved the step to `booked`, naming no
    booking: no booking held it, and eligibility refused every new one (`step_already_booked`) for good."""
    from tasks.bookings import mirrors
    from tasks.events import platform_data
    from tasks.purchases import manual

    database = pg_database
    w = _revoked_with_a_standing_booking(database)
    held, release = threading.Event(), threading.Event()
    now = datetime.now(timezone.utc)

    def cancel_class():
        data = platform_data("class.upserted", class_upserted(w.option(1), status="cancelled", when=now)["data"])
        with database.session_scope() as s:
            group_class = mirrors.upsert_class(session=s, data=data, occurred_at=now).group_class
            students = bookings.hold_students_of_class(s, group_class.id)
            assert bookings.cancel_class(session=s, group_class=group_class, at=now, students=students) == ["bk_1"]
            held.set()
            assert release.wait(30)

    def reinstate():
        with database.session_scope() as s:
            manual.reinstate(session=s, enrollment_id=w.enrollment_id, cause="admin:2")

    _, reinstated, waited = while_held(database, cancel_class, reinstate, held=held, release=release)
    reinstated.result()
    assert waited
    assert booking(database, "bk_1").status.value == "cancelled"
    assert (progress(database, w, 1)["status"].value, progress(database, w, 1)["booking_id"]) == ("unbooked", None)
    with database.session_scope() as s:
        verdict = bookings.step_guard(session=s, student_id=w.student_id, course_step_id=w.step_ids[0])
    assert verdict.as_dict() == {"eligible": True, "reason": None}


# --------------------------------------------------------------------------- a class first heard of as cancelled


@pytest.mark.parametrize("kind", ["step", "credit"])
def test_a_booking_crossing_the_first_upsert_of_its_class_a_cancellation_does_not_stand_in_it(pg_database, kind):
    """Before: with no mirror row yet, the booking's shared lock on the class's row had nothing to lock; the
    cancellation inserted the row and found no booking to cancel, the booking found no class, and it stood in the
    cancelled class (the step booked, the credit spent)."""
    database = pg_database
    w = world(database, classes=False, group_credits=1)
    now = datetime.now(timezone.utc)
    cancel_id = store(database, class_upserted(w.option(1), status="cancelled", when=now))
    book_id = store(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=now) if kind == "step"
                    else booking_created("bk_1", w.option(1), credit_type="group", when=now))
    held, release = threading.Event(), threading.Event()

    def cancel():
        with database.session_scope() as s:
            assert inbox.process_event(session=s, inbox_id=cancel_id).outcome is inbox.Outcome.PROCESSED
            held.set()
            assert release.wait(30)

    _, booked, waited = while_held(database, cancel, lambda: run(database, book_id).outcome, held=held,
                                   release=release)
    assert booked.result() is inbox.Outcome.PROCESSED and waited
    assert (rejections(database), progress(database, w, 1)["status"].value, balances(database)["group"]) == \
        ({"bk_1": "class_cancelled"}, "unbooked", 1)


# --------------------------------------------------------------------------- a rebooking and the cancel it waits for


@pytest.mark.parametrize("end", ["cancel", "no_show"])
def test_a_rebooking_and_the_end_it_waits_for_processed_at_once_do_not_deadlock(pg_database, monkeypatch, end):
    """The newer booking finds the step held and waits for the older one's end: it takes that end's key lock
    (`booking-ended:bk_1`) and looks again, which takes the enrollment's lock. Before: the cancel (or the
    attendance) took the enrollment's lock and then the key's, the other order, and PostgreSQL ended one of the
    two as a deadlock (a retry, an attempt spent, an error logged)."""
    from tests.conftest import lock_waited_or_done
    from tests.netutil import wait_until
    from tests.tasks.bookings.bookings_support import attendance

    database = pg_database
    w = world(database)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0)))
    end_id = store(database, booking_cancelled("bk_1", within_policy=True, when=at(10)) if end == "cancel"
                   else attendance("bk_1", "no_show", when=at(10)))
    rebook_id = store(database, booking_created("bk_2", w.option(1), step_id=w.step_ids[0], when=at(20)))
    rebooker = threading.local()
    has_key, go = threading.Event(), threading.Event()
    lock = HandlerContext.lock

    def pausing_lock(self, subject):
        lock(self, subject)
        if getattr(rebooker, "me", False) and subject == "booking-ended:bk_1" and not has_key.is_set():
            has_key.set()  # the rebooking holds the awaited key, about to look again
            assert go.wait(30)

    monkeypatch.setattr(HandlerContext, "lock", pausing_lock)

    def process(inbox_id, *, me=False):
        rebooker.me = me
        with database.session_scope() as s:
            return inbox.process_event(session=s, inbox_id=inbox_id)

    with ThreadPoolExecutor(2) as pool:
        rebook = pool.submit(process, rebook_id, me=True)
        assert has_key.wait(30)
        ended = pool.submit(process, end_id)
        assert wait_until(lambda: lock_waited_or_done(database, ended), timeout=30)
        go.set()
        results = {"rebook": rebook.result(30), "end": ended.result(30)}
    assert all(r.outcome is not inbox.Outcome.RETRY for r in results.values()), results
    run(database, rebook_id)  # woken by the end (here by hand: no broker)
    assert (progress(database, w, 1)["status"].value, progress(database, w, 1)["booking_id"]) == ("booked", "bk_2")
