"""Course-step bookings through the real inbox (store_event + process_event), on SQLite and PostgreSQL.

Every rule has its "same event twice" twin (a redelivery of the event id and a twin under a new
id) and its "wrong order" twin.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.enums import EnrollmentStatus, InboxStatus
from db.models import Booking, CreditLedgerEntry, OutboxMessage, TransitionLog
from tasks.inbox.runner import Outcome
from tests.tasks.bookings.bookings_support import (
    at,
    booking,
    booking_cancelled,
    booking_created,
    count,
    deliver,
    inbox_row,
    outbox_rows,
    progress,
    rejections,
    state,
    store,
    twin,
    world,
)


def _book(database, w, booking_id="bk_1", position=1, when=None, class_id=None):
    event = booking_created(booking_id, class_id or w.option(position), step_id=w.step_ids[position - 1],
                            when=when or at(0))
    return event, deliver(database, event)


# --------------------------------------------------------------------------- allowed


def test_allowed_booking_books_the_step_with_booking_class_and_time(database):
    w = world(database)
    event, result = _book(database, w)
    assert result.outcome is Outcome.PROCESSED
    p = progress(database, w, 1)
    assert p["status"].value == "booked" and p["booking_id"] == "bk_1" and p["group_class_id"] == w.option(1)
    assert p["booked_at"] == at(0) and p["skipped_ahead"] is False
    b = booking(database, "bk_1")
    assert b.status.value == "active" and b.enrollment_id == w.enrollment_id and b.course_step_id == w.step_ids[0]
    # a course-step booking never consumes a credit
    assert count(database, CreditLedgerEntry) == 0
    [mail] = outbox_rows(database, "booking_confirmed")
    assert mail.recipient == "stu_1@example.test"
    ctx = mail.payload["context"]
    assert (ctx["student_name"], ctx["course_code"], ctx["step_label"], ctx["class_title"], ctx["timezone"]) == (
        "Student One", "SFZ", "SFZ-1", "Class 1", "Europe/Berlin")
    assert ctx["starts_at"].endswith("+00:00")
    [changed] = outbox_rows(database, "course_step.progress_changed")
    assert changed.payload["data"]["status"] == "booked" and changed.payload["data"]["booking_id"] == "bk_1"
    assert rejections(database) == {}


def test_same_booking_twice_is_a_no_op(database):
    w = world(database)
    event, _ = _book(database, w)
    before = state(database, w)
    assert store(database, event) == inbox_row(database, event).id  # redelivery: the same inbox row
    assert deliver(database, twin(event)).outcome is Outcome.PROCESSED  # new event id, same booking
    assert state(database, w) == before
    assert len(outbox_rows(database, "booking_confirmed")) == 1
    assert len(outbox_rows(database, "course_step.progress_changed")) == 1
    assert count(database, TransitionLog, TransitionLog.entity == "progress") == 1


def test_skipped_ahead_is_recorded_when_an_earlier_step_is_unbooked(database):
    w = world(database)
    _book(database, w, "bk_2", position=2)
    assert progress(database, w, 2)["skipped_ahead"] is True
    _book(database, w, "bk_1", position=1)
    assert progress(database, w, 1)["skipped_ahead"] is False


def test_different_steps_may_be_booked_at_once(database):
    w = world(database)
    for position in (1, 2, 3):
        _book(database, w, f"bk_{position}", position=position)
    assert [progress(database, w, n)["status"].value for n in (1, 2, 3)] == ["booked"] * 3


def test_a_waitlist_promotion_is_just_a_booking_created(database):
    """Class full, one student cancels, the platform promotes a waitlisted student: we see a booking."""
    first = world(database, student_id="stu_1")
    with database.session_scope() as s:
        from tests import factories
        from db.models import CourseProgram

        program = s.get(CourseProgram, first.program_id)
        waitlisted = factories.student(s, id="stu_2", email="stu2@example.test")
        second_enrollment = factories.enrollment(s, waitlisted, program, session_id="cs_test_2").id
    _book(database, first, "bk_1")
    deliver(database, booking_cancelled("bk_1", within_policy=True, when=at(10)))
    promoted = booking_created("bk_w", first.option(1), step_id=first.step_ids[0], student_id="stu_2", when=at(11))
    assert deliver(database, promoted).outcome is Outcome.PROCESSED
    assert deliver(database, twin(promoted)).outcome is Outcome.PROCESSED
    second = type(first)("stu_2", first.program_id, second_enrollment, first.step_ids)
    assert progress(database, second, 1)["booking_id"] == "bk_w"
    assert progress(database, first, 1)["status"].value == "unbooked"
    assert rejections(database) == {}


# --------------------------------------------------------------------------- refused


def _refused(database, event, reason, w=None):
    before = state(database, w) if w and w.enrollment_id else None
    mails_before = len(outbox_rows(database, "booking_confirmed"))
    assert deliver(database, event).outcome is Outcome.PROCESSED
    bid = event["data"]["booking_id"]
    assert rejections(database)[bid] == reason
    b = booking(database, bid)
    assert b.status.value == "rejected" and b.rejection_reason == reason
    # the same event twice: one rejection, one row
    deliver(database, twin(event))
    assert len([r for r in outbox_rows(database, "booking.rejected") if r.payload["data"]["booking_id"] == bid]) == 1
    assert count(database, Booking, Booking.id == bid) == 1
    if before is not None:
        after = state(database, w)
        after["bookings"].pop(bid)
        assert after == before  # nothing else changed
    assert len(outbox_rows(database, "booking_confirmed")) == mails_before


def test_no_enrollment_is_refused(database):
    w = world(database, enrolled=False)
    _refused(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0]), "no_active_enrollment")


@pytest.mark.parametrize("status", [EnrollmentStatus.PENDING, EnrollmentStatus.REVOKED, EnrollmentStatus.FAILED])
def test_an_enrollment_not_active_is_refused(database, status):
    w = world(database, status=status)
    _refused(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0]), "no_active_enrollment", w)


def test_a_suspended_enrollment_is_refused(database):
    w = world(database, status=EnrollmentStatus.SUSPENDED)
    _refused(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0]), "enrollment_suspended", w)


def test_a_class_that_is_not_an_option_of_the_step_is_refused(database):
    w = world(database)
    # the option of step 2, booked as step 1
    _refused(database, booking_created("bk_1", w.option(2), step_id=w.step_ids[0]), "not_a_step_option", w)


def test_an_unknown_step_is_refused(database):
    w = world(database)
    _refused(database, booking_created("bk_1", w.option(1), step_id=999_999), "unknown_course_step", w)


def test_a_second_booking_of_a_booked_step_is_refused(database):
    w = world(database)
    _book(database, w, "bk_1")
    # the same moment (not newer): nothing can be in flight, refused at once
    _refused(database, booking_created("bk_2", w.option(1), step_id=w.step_ids[0], when=at(0)),
             "step_already_booked", w)
    assert progress(database, w, 1)["booking_id"] == "bk_1"


def test_a_completed_step_is_refused(database):
    w = world(database)
    _book(database, w, "bk_1")
    from tests.tasks.bookings.bookings_support import attendance

    deliver(database, attendance("bk_1", "attended", when=at(100)))
    _refused(database, booking_created("bk_2", w.option(1), step_id=w.step_ids[0], when=at(200)),
             "step_already_completed", w)


def test_a_booking_before_its_enrollment_is_refused_and_stays_refused(database):
    """Wrong order for refusals: the platform asks eligibility first; a refusal is final (idempotent)."""
    w = world(database, enrolled=False)
    event = booking_created("bk_1", w.option(1), step_id=w.step_ids[0])
    deliver(database, event)
    with database.session_scope() as s:
        from tests import factories
        from db.models import CourseProgram, Student

        factories.enrollment(s, s.get(Student, "stu_1"), s.get(CourseProgram, w.program_id))
    deliver(database, twin(event))
    assert booking(database, "bk_1").status.value == "rejected"
    assert len(outbox_rows(database, "booking.rejected")) == 1


# --------------------------------------------------------------------------- a held step


def test_a_newer_booking_waits_for_the_older_bookings_cancel_in_flight(database):
    """Wrong order: the platform cancelled bk_1 and then booked bk_2; bk_2 arrives first."""
    w = world(database)
    _book(database, w, "bk_1", when=at(0))
    newer = booking_created("bk_2", w.option(1), step_id=w.step_ids[0], when=at(20))
    assert deliver(database, newer).outcome is Outcome.WAITING
    assert inbox_row(database, newer).waiting_for == "booking-ended:bk_1"
    assert deliver(database, booking_cancelled("bk_1", when=at(10))).outcome is Outcome.PROCESSED
    assert inbox_row(database, newer).status == InboxStatus.PROCESSED
    p = progress(database, w, 1)
    assert p["status"].value == "booked" and p["booking_id"] == "bk_2"
    assert rejections(database) == {}


def test_a_newer_booking_is_refused_once_the_hold_window_passed(database):
    from datetime import timedelta

    from db.models import InboxEvent
    from db.types import utcnow
    from tests import inbox_api as inbox
    from tests.tasks.bookings.bookings_support import run

    w = world(database)
    _book(database, w, "bk_1", when=at(0))
    newer = booking_created("bk_2", w.option(1), step_id=w.step_ids[0], when=at(20))
    inbox_id = store(database, newer)
    assert run(database, inbox_id).outcome is Outcome.WAITING
    with database.session_scope() as s:
        s.get(InboxEvent, inbox_id).received_at = utcnow() - timedelta(minutes=11)
        assert inbox.requeue_waiting(session=s) == [inbox_id]  # the scheduled retry of parked events
    assert run(database, inbox_id).outcome is Outcome.PROCESSED
    assert rejections(database) == {"bk_2": "step_already_booked"}
    assert progress(database, w, 1)["booking_id"] == "bk_1"


@pytest.mark.parametrize("kind", ["step", "credit"])
def test_a_booking_past_the_hold_window_still_waits_for_a_cancel_already_received(database, kind):
    """The workers fell behind: the newer booking is processed more than HOLD_WINDOW after it arrived, with the
    older booking's cancel received but not applied yet. It waits for that cancel instead of being refused."""
    from datetime import timedelta

    from db.models import InboxEvent
    from db.types import utcnow
    from tests.tasks.bookings.bookings_support import run

    w = world(database, group_credits=1)
    if kind == "step":
        _book(database, w, "bk_1", when=at(0))
        newer = booking_created("bk_2", w.option(1), step_id=w.step_ids[0], when=at(20))
    else:
        deliver(database, booking_created("bk_1", "gc_a", credit_type="group", when=at(0)))
        newer = booking_created("bk_2", "gc_b", credit_type="group", when=at(20))
    cancel = store(database, booking_cancelled("bk_1", when=at(10)))  # received, queued behind
    inbox_id = store(database, newer)
    with database.session_scope() as s:
        s.get(InboxEvent, inbox_id).received_at = utcnow() - timedelta(minutes=15)
    assert run(database, inbox_id).outcome is Outcome.WAITING
    assert run(database, cancel).outcome is Outcome.PROCESSED  # wakes the booking
    assert rejections(database) == {}
    assert booking(database, "bk_2").status.value == "active"


def test_a_credit_booking_past_the_hold_window_waits_for_any_older_bookings_cancel_received(database):
    """Two credits spent by bk_1 and bk_2; the platform cancels bk_1 and books bk_3 with the credit that came
    back. Processed late, bk_3 finds the cancel of bk_1 (not the newest older booking) received: it waits for it."""
    from datetime import timedelta

    from db.models import InboxEvent
    from db.types import utcnow
    from tests.tasks.bookings.bookings_support import run

    world(database, group_credits=2)
    deliver(database, booking_created("bk_1", "gc_a", credit_type="group", when=at(0)))
    deliver(database, booking_created("bk_2", "gc_b", credit_type="group", when=at(5)))
    cancel = store(database, booking_cancelled("bk_1", when=at(10)))
    inbox_id = store(database, booking_created("bk_3", "gc_c", credit_type="group", when=at(20)))
    with database.session_scope() as s:
        s.get(InboxEvent, inbox_id).received_at = utcnow() - timedelta(minutes=15)
    assert run(database, inbox_id).outcome is Outcome.WAITING
    assert inbox_row_waiting(database, inbox_id) == "booking-ended:bk_1"
    assert run(database, cancel).outcome is Outcome.PROCESSED
    assert rejections(database) == {} and booking(database, "bk_3").status.value == "active"


def inbox_row_waiting(database, inbox_id):
    from db.models import InboxEvent

    with database.session_scope() as s:
        return s.get(InboxEvent, inbox_id).waiting_for


def test_an_older_booking_arriving_after_a_newer_one_is_history_and_changes_no_progress(database):
    """Wrong order: bk_1 booked at 0 and cancelled at 10, bk_2 booked at 20 — delivered bk_2 first."""
    w = world(database)
    _book(database, w, "bk_2", when=at(20))
    _book(database, w, "bk_1", when=at(0))
    deliver(database, booking_cancelled("bk_1", within_policy=False, when=at(10)))
    p = progress(database, w, 1)
    assert p["status"].value == "booked" and p["booking_id"] == "bk_2"
    assert booking(database, "bk_1").status.value == "cancelled"
    assert booking(database, "bk_1").enrollment_id is None  # detached: it never held the step after bk_2
    assert rejections(database) == {}


# --------------------------------------------------------------------------- the unique index


def test_the_partial_unique_index_is_the_last_word(database):
    """A second active booking of the step slipping past the guard (no lock) is refused by the index."""
    from tasks.bookings import services as bookings
    from tasks.events import BookingCreated

    w = world(database)
    _book(database, w, "bk_1")
    with database.session_scope() as s:
        # make the guard blind: the step looks unbooked, but bk_1 still holds it in the booking table
        from db.models import StudentCourseProgress

        row = s.scalar(select(StudentCourseProgress).where(StudentCourseProgress.booking_id == "bk_1"))
        row.status, row.booking_id = row.status.UNBOOKED, None
    with database.session_scope() as s:
        original = bookings._holder
        bookings._holder = lambda *a, **k: None
        try:
            result = bookings.record_booking(
                session=s, data=BookingCreated(booking_id="bk_2", student_id="stu_1", class_id=w.option(1),
                                               course_step_id=w.step_ids[0]), at=at(0), lock=False)
        finally:
            bookings._holder = original
        assert result.status.value == "rejected" and result.rejection_reason == "step_already_booked"
    assert rejections(database) == {"bk_2": "step_already_booked"}
    assert count(database, OutboxMessage, OutboxMessage.topic == "booking_confirmed") == 1
