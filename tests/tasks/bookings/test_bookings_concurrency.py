"""20 concurrent booking.created for one step of one enrollment, on PostgreSQL: exactly one booked,
19 refused, each with its booking.rejected outbox row."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from db.enums import InboxStatus
from db.models import Booking, InboxEvent
from tasks import signatures
from tests import inbox_api as inbox
from tasks.bookings import services as bookings
from tasks.events import BookingCreated
from tests.conftest import PLATFORM_SECRET, while_held
from tests.tasks.bookings.bookings_support import at, booking_created, outbox_rows, progress, rejections, store, world

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
