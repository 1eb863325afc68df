"""After the booking: cancellations, attendance, credit bookings, cancelled classes — each rule with its
"same event twice" and "wrong order" twins, on SQLite and PostgreSQL, through the real inbox."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.enums import ClassStatus, InboxStatus, ProgressStatus
from db.models import CreditLedgerEntry, TransitionLog
from tasks.inbox.runner import Outcome
from tests.tasks.bookings.bookings_support import (
    at,
    attendance,
    balances,
    booking,
    booking_cancelled,
    booking_created,
    class_upserted,
    count,
    deliver,
    enrollment_status,
    inbox_row,
    outbox_rows,
    progress,
    rejections,
    run,
    state,
    store,
    student_upserted,
    twin,
    world,
)


def book(database, w, booking_id="bk_1", position=1, when=None):
    deliver(database, booking_created(booking_id, w.option(position), step_id=w.step_ids[position - 1],
                                      when=when or at(0)))


def transitions(database, entity, entity_id) -> list[tuple[str | None, str]]:
    with database.session_scope() as s:
        return [(r.from_status, r.to_status) for r in s.scalars(
            select(TransitionLog).where(TransitionLog.entity == entity, TransitionLog.entity_id == str(entity_id))
            .order_by(TransitionLog.id))]


# --------------------------------------------------------------------------- cancellation of a step booking


def test_cancel_within_policy_reopens_the_step_keeping_history_and_it_can_be_rebooked(database):
    w = world(database)
    book(database, w)
    cancel = booking_cancelled("bk_1", within_policy=True, when=at(10))
    deliver(database, cancel)
    p = progress(database, w, 1)
    assert p["status"].value == "unbooked" and p["booking_id"] is None and p["unbooked_at"] == at(10)
    b = booking(database, "bk_1")
    assert b.status.value == "cancelled" and b.cancelled_at == at(10) and b.within_policy is True
    with database.session_scope() as s:
        from db.models import StudentCourseProgress

        pid = s.scalar(select(StudentCourseProgress.id).where(StudentCourseProgress.step_id == w.step_ids[0]))
    assert transitions(database, "progress", pid) == [("unbooked", "booked"), ("booked", "unbooked")]
    [mail] = outbox_rows(database, "booking_cancelled")
    assert mail.payload["context"]["step_label"] == "SFZ-1" and mail.payload["context"]["within_policy"] is True
    # twice: nothing more
    deliver(database, twin(cancel))
    assert len(outbox_rows(database, "booking_cancelled")) == 1
    assert len(transitions(database, "progress", pid)) == 2
    # rebookable
    book(database, w, "bk_2", when=at(20))
    assert progress(database, w, 1)["booking_id"] == "bk_2"


def test_a_booking_stamped_in_the_future_does_not_push_the_rebooking_of_its_step_out(database):
    # the platform's clock ran 2 minutes ahead for bk_1: taken as when it reached us, so the rebooking
    # that follows its cancel is the newer one and holds the step (not "older history", detached)
    from datetime import datetime, timedelta, timezone

    w = world(database)
    now = datetime.now(timezone.utc)
    book(database, w, "bk_1", when=now + timedelta(minutes=2))
    deliver(database, booking_cancelled("bk_1", within_policy=True, when=now + timedelta(seconds=1)))
    book(database, w, "bk_2", when=now + timedelta(seconds=2))
    assert progress(database, w, 1)["booking_id"] == "bk_2" and progress(database, w, 1)["status"].value == "booked"
    assert booking(database, "bk_2").enrollment_id == w.enrollment_id
    assert now <= booking(database, "bk_1").booked_at < now + timedelta(minutes=1)  # when it reached us


def test_cancel_outside_policy_marks_the_step_missed(database):
    w = world(database)
    book(database, w)
    cancel = booking_cancelled("bk_1", within_policy=False, when=at(10))
    deliver(database, cancel)
    deliver(database, twin(cancel))
    p = progress(database, w, 1)
    assert p["status"].value == "missed" and p["missed_at"] == at(10) and p["booking_id"] == "bk_1"
    assert len(outbox_rows(database, "booking_cancelled")) == 1


def test_cancel_before_its_booking_waits_then_applies(database):
    w = world(database)
    cancel = booking_cancelled("bk_1", within_policy=False, when=at(10))
    assert deliver(database, cancel).outcome is Outcome.WAITING
    assert inbox_row(database, cancel).waiting_for == "booking:bk_1"
    book(database, w)  # wakes the cancel
    assert inbox_row(database, cancel).status == InboxStatus.PROCESSED
    assert progress(database, w, 1)["status"].value == "missed"
    assert booking(database, "bk_1").status.value == "cancelled"


def test_cancel_of_a_rejected_booking_changes_nothing(database):
    w = world(database)
    deliver(database, booking_created("bk_1", w.option(2), step_id=w.step_ids[0]))  # not an option
    before = state(database, w)
    assert deliver(database, booking_cancelled("bk_1")).outcome is Outcome.PROCESSED
    assert state(database, w) == before


# --------------------------------------------------------------------------- attendance


def test_attended_completes_the_step_and_the_last_one_completes_the_enrollment(database):
    w = world(database, steps=2)
    book(database, w, "bk_1", 1)
    book(database, w, "bk_2", 2)
    first = attendance("bk_1", "attended", when=at(100))
    deliver(database, first)
    deliver(database, twin(first))
    p = progress(database, w, 1)
    assert p["status"].value == "completed" and p["completed_at"] == at(100)
    assert booking(database, "bk_1").status.value == "attended"
    assert enrollment_status(database, w) == "active"
    deliver(database, attendance("bk_2", "attended", when=at(200)))
    assert enrollment_status(database, w) == "completed"
    assert transitions(database, "enrollment", w.enrollment_id)[-1] == ("active", "completed")


def test_no_show_marks_the_step_missed_and_it_can_be_booked_again(database):
    w = world(database)
    book(database, w)
    no_show = attendance("bk_1", "no_show", when=at(100))
    deliver(database, no_show)
    deliver(database, twin(no_show))
    p = progress(database, w, 1)
    assert p["status"].value == "missed" and p["missed_at"] == at(100)
    assert booking(database, "bk_1").status.value == "no_show"
    book(database, w, "bk_2", when=at(200))
    assert progress(database, w, 1)["status"].value == "booked"


def test_attendance_before_its_booking_waits_then_applies(database):
    w = world(database, steps=1)
    mark = attendance("bk_1", "attended", when=at(100))
    assert deliver(database, mark).outcome is Outcome.WAITING
    book(database, w)
    assert progress(database, w, 1)["status"].value == "completed"
    assert enrollment_status(database, w) == "completed"


def test_an_impossible_transition_is_a_handled_failure_not_a_crash_loop(database):
    w = world(database)
    book(database, w)
    deliver(database, booking_cancelled("bk_1", when=at(10)))
    before = state(database, w)
    late = attendance("bk_1", "attended", when=at(100))
    assert deliver(database, late).outcome is Outcome.FAILED
    row = inbox_row(database, late)
    assert row.status == InboxStatus.FAILED and row.attempts == 1
    assert "IllegalTransition" in row.last_error and "cancelled -> attended" in row.last_error
    assert state(database, w) == before


# --------------------------------------------------------------------------- credit bookings


def test_a_credit_booking_consumes_one_credit_of_its_type_once(database):
    world(database, group_credits=2)
    event = booking_created("bk_c", "gc_plain", credit_type="group")
    deliver(database, event)
    deliver(database, twin(event))
    assert balances(database) == {"group": 1, "private": 0}
    assert booking(database, "bk_c").status.value == "active"
    assert count(database, CreditLedgerEntry, CreditLedgerEntry.entry_type == "consume") == 1


def test_a_credit_booking_without_credit_is_refused_no_credit(database):
    world(database, private_credits=1)
    event = booking_created("bk_c", "gc_plain", credit_type="group")
    deliver(database, event)
    deliver(database, twin(event))
    assert rejections(database) == {"bk_c": "no_credit"}
    assert balances(database) == {"group": 0, "private": 1}


def test_a_course_step_booking_with_a_credit_type_still_consumes_nothing(database):
    w = world(database, group_credits=1)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], credit_type="group"))
    assert balances(database) == {"group": 1, "private": 0}
    assert progress(database, w, 1)["status"].value == "booked"


def test_credit_cancel_within_policy_releases_it_outside_keeps_it_spent(database):
    world(database, group_credits=2)
    deliver(database, booking_created("bk_a", "gc_plain", credit_type="group"))
    deliver(database, booking_created("bk_b", "gc_plain", credit_type="group"))
    assert balances(database)["group"] == 0
    within = booking_cancelled("bk_a", within_policy=True)
    deliver(database, within)
    deliver(database, twin(within))
    assert balances(database)["group"] == 1
    deliver(database, booking_cancelled("bk_b", within_policy=False))
    assert balances(database)["group"] == 1


def test_credit_cancel_before_its_booking_waits_and_ends_as_if_in_order(database):
    world(database, group_credits=1)
    cancel = booking_cancelled("bk_a", within_policy=True)
    assert deliver(database, cancel).outcome is Outcome.WAITING
    deliver(database, booking_created("bk_a", "gc_plain", credit_type="group"))
    assert balances(database)["group"] == 1
    assert booking(database, "bk_a").status.value == "cancelled"


# --------------------------------------------------------------------------- a cancelled class


def test_a_cancelled_class_cancels_its_bookings_reopens_steps_releases_credits_and_mails(database):
    w = world(database, group_credits=1)
    book(database, w, "bk_1", 1)
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group"))  # a drop-in on the same class
    assert balances(database)["group"] == 0
    cancelled = class_upserted(w.option(1), status="cancelled", when=at(50))
    deliver(database, cancelled)
    deliver(database, twin(cancelled))
    p = progress(database, w, 1)
    assert p["status"].value == "unbooked" and p["booking_id"] is None
    assert booking(database, "bk_1").status.value == "cancelled"
    assert booking(database, "bk_c").status.value == "cancelled"
    assert balances(database)["group"] == 1
    mails = outbox_rows(database, "class_cancelled")
    assert len(mails) == 2 and {m.payload["context"]["booking_id"] for m in mails} == {"bk_1", "bk_c"}
    assert {m.payload["context"]["step_label"] for m in mails} == {"SFZ-1", None}


def test_a_class_cancelled_by_a_caller_that_held_no_student_still_addresses_each_mail(database):
    """`cancel_class` addresses its mails from the students its caller held (the handler's
    `hold_students_of_class`); a booked student missing from them is held and read there instead of going
    unmailed."""
    from db.models import GroupClass
    from tasks.bookings import services as bookings

    w = world(database)
    book(database, w, "bk_1", 1)
    deliver(database, student_upserted("stu_1", email="ann@example.test", name="Ann", tz="Asia/Tokyo", when=at(5)))
    with database.session_scope() as s:
        group_class = s.get(GroupClass, w.option(1))
        group_class.status = ClassStatus.CANCELLED
        assert bookings.cancel_class(session=s, group_class=group_class, at=at(50), students={}) == ["bk_1"]
    [mail] = outbox_rows(database, "class_cancelled")
    assert mail.recipient == "ann@example.test"
    assert mail.payload["context"]["student_name"] == "Ann" and mail.payload["context"]["timezone"] == "Asia/Tokyo"


@pytest.mark.parametrize("late", [False, True], ids=["in order", "cancel delivered after the class's"])
def test_a_credit_booking_cancelled_outside_policy_before_its_class_was_ends_as_in_order(database, late):
    """The student cancels late (t10), then the studio cancels the class (t20). Before: with the class's event
    applied first, it cancelled the booking within policy and gave the credit back, and the late cancel then
    changed nothing: a credit the student had lost."""
    w = world(database, group_credits=1)
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group", when=at(0)))
    cancel = booking_cancelled("bk_c", within_policy=False, when=at(10))
    cancelled_class = class_upserted(w.option(1), status="cancelled", when=at(20))
    for event in ((cancelled_class, cancel) if late else (cancel, cancelled_class)):
        deliver(database, event)
    deliver(database, twin(cancel))  # and once more: nothing more
    assert balances(database)["group"] == 0
    b = booking(database, "bk_c")
    assert (b.status.value, b.cancelled_at, b.within_policy) == ("cancelled", at(10), False)


@pytest.mark.parametrize("late", [False, True], ids=["in order", "cancel delivered after the class's"])
def test_a_step_booking_cancelled_outside_policy_before_its_class_was_ends_missed_as_in_order(database, late):
    w = world(database)
    book(database, w, "bk_1", 1)
    cancel = booking_cancelled("bk_1", within_policy=False, when=at(10))
    cancelled_class = class_upserted(w.option(1), status="cancelled", when=at(50))
    for event in ((cancelled_class, cancel) if late else (cancel, cancelled_class)):
        deliver(database, event)
    deliver(database, twin(cancel))  # and once more: nothing more
    p = progress(database, w, 1)
    assert (p["status"].value, p["booking_id"]) == ("missed", "bk_1")
    assert (booking(database, "bk_1").within_policy, booking(database, "bk_1").cancelled_at) == (False, at(10))


def test_a_late_cancel_leaves_a_step_booked_again_since_and_a_credit_spent_since(database):
    """What the class's cancellation gave back and the student used before the late cancel arrived stays used:
    the step rebooked stays booked, and a credit spent on another booking is not taken twice (no negative
    balance)."""
    w = world(database, group_credits=1)
    book(database, w, "bk_1", 1)
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group", when=at(0)))
    deliver(database, class_upserted(w.option(1), status="cancelled", when=at(50)))
    from db.models import CourseStepOption

    with database.session_scope() as s:  # another class for the step
        s.add(CourseStepOption(program_id=w.program_id, step_id=w.step_ids[0], group_class_id="gc_again"))
    deliver(database, booking_created("bk_2", "gc_again", step_id=w.step_ids[0], when=at(60)))
    deliver(database, booking_created("bk_c2", w.option(2), credit_type="group", when=at(60)))
    deliver(database, booking_cancelled("bk_1", within_policy=False, when=at(10)))
    deliver(database, booking_cancelled("bk_c", within_policy=False, when=at(10)))
    assert (progress(database, w, 1)["status"].value, progress(database, w, 1)["booking_id"]) == ("booked", "bk_2")
    assert balances(database)["group"] == 0
    assert booking(database, "bk_c").within_policy is False


def test_a_booking_on_a_class_already_cancelled_is_refused(database):
    """Wrong order: the class was cancelled (we know) and a booking on it arrives afterwards."""
    w = world(database, group_credits=1)
    deliver(database, class_upserted(w.option(1), status="cancelled", when=at(50)))
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0)))
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group", when=at(0)))
    assert rejections(database) == {"bk_1": "class_cancelled", "bk_c": "class_cancelled"}
    assert progress(database, w, 1)["status"].value == "unbooked"
    assert balances(database)["group"] == 1
    # the students still hear of the cancellation
    assert len(outbox_rows(database, "class_cancelled")) == 2


def test_an_older_scheduled_upsert_does_not_revive_a_cancelled_class(database):
    w = world(database)
    book(database, w)
    deliver(database, class_upserted(w.option(1), status="cancelled", when=at(50)))
    deliver(database, class_upserted(w.option(1), status="scheduled", when=at(40)))
    book(database, w, "bk_2", when=at(60))
    assert rejections(database) == {"bk_2": "class_cancelled"}


def _cancelled_then_scheduled_again(database, w, *, revival_first):
    """The class cancelled at t50 and scheduled again at t60, in the order asked, each also sent twice (a
    redelivery and a twin) after both: the repeats change nothing."""
    cancel = class_upserted(w.option(1), status="cancelled", when=at(50))
    revival = class_upserted(w.option(1), status="scheduled", when=at(60))
    ordered = (revival, cancel) if revival_first else (cancel, revival)
    for event in (*ordered, *ordered, *map(twin, ordered)):
        deliver(database, event)


@pytest.mark.parametrize("revival_first", [False, True], ids=["in_order", "revival_first"])
def test_a_cancellation_delivered_after_the_class_was_scheduled_again_still_ends_the_bookings_before_it(
        database, revival_first):
    """Before: a class cancelled at t50 and scheduled again at t60, the t60 upsert applied first: the cancellation
    was stale and dropped whole, so its bookings stayed booked, the step taken and the credit spent. A booking made
    after the class was scheduled again stands either way."""
    w = world(database, group_credits=2)
    book(database, w, "bk_1", 1)
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group", when=at(0)))
    _cancelled_then_scheduled_again(database, w, revival_first=revival_first)
    deliver(database, booking_created("bk_c2", w.option(1), credit_type="group", when=at(70)))
    assert (booking(database, "bk_1").status.value, booking(database, "bk_c").status.value,
            booking(database, "bk_c2").status.value) == ("cancelled", "cancelled", "active")
    assert progress(database, w, 1)["status"].value == "unbooked"
    assert balances(database)["group"] == 1
    assert len(outbox_rows(database, "class_cancelled")) == 2
    book(database, w, "bk_2", 1, when=at(80))  # the step can be booked again, into the class scheduled again
    assert progress(database, w, 1)["booking_id"] == "bk_2"


def test_a_cancellation_that_stays_the_class_s_state_ends_every_booking_on_it_one_stamped_after_it_too(database):
    """A booking stamped after the cancellation (another host's clock a little ahead) still ends with the class
    when nothing scheduled it again: only a cancellation a newer upsert replaced keeps to the bookings made by it."""
    w = world(database, group_credits=1)
    book(database, w, "bk_1", 1, when=at(10))
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group", when=at(10)))
    deliver(database, class_upserted(w.option(1), status="cancelled", when=at(5)))
    assert (booking(database, "bk_1").status.value, booking(database, "bk_c").status.value) == \
        ("cancelled", "cancelled")
    assert progress(database, w, 1)["status"].value == "unbooked" and balances(database)["group"] == 1


def test_a_booking_made_before_a_cancellation_and_delivered_after_the_class_was_scheduled_again_is_refused(
        database):
    """Before: a booking made at t0, delivered after the class's cancellation (t50) and its revival (t60), was
    accepted and stood, although the cancellation had ended it; delivered in order it ends cancelled."""
    w = world(database, group_credits=1)
    _cancelled_then_scheduled_again(database, w, revival_first=False)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0)))
    deliver(database, booking_created("bk_c", w.option(1), credit_type="group", when=at(0)))
    assert rejections(database) == {"bk_1": "class_cancelled", "bk_c": "class_cancelled"}
    assert progress(database, w, 1)["status"].value == "unbooked"
    assert balances(database)["group"] == 1
    book(database, w, "bk_2", 1, when=at(70))  # made after the revival: it stands
    assert progress(database, w, 1)["booking_id"] == "bk_2"


def test_a_cancellation_stamped_the_same_second_as_the_update_before_it_still_applies(database):
    """Before: an upsert whose `occurred_at` equalled the newest applied one was dropped, even in order, so a
    cancellation sent in the same second as the class's previous update left its bookings standing."""
    w = world(database)
    deliver(database, class_upserted(w.option(1), status="scheduled", when=at(30)))
    book(database, w)
    deliver(database, class_upserted(w.option(1), status="cancelled", when=at(30)))
    assert progress(database, w, 1)["status"].value == "unbooked"
    book(database, w, "bk_2", when=at(60))
    assert rejections(database) == {"bk_2": "class_cancelled"}


def test_a_class_and_a_booking_with_the_longest_ids_are_cancelled_together(database):
    """Before: the reopened step was logged under `class_cancelled:<class id>:<booking id>`, 145 characters for
    two 64-character ids, over the 128 a logged cause holds: on PostgreSQL the class's cancellation failed for
    good, and none of its bookings was cancelled."""
    from db.models import CourseStepOption

    w = world(database)
    long_class, long_booking = "c" * 64, "b" * 64
    with database.session_scope() as s:
        s.add(CourseStepOption(program_id=w.program_id, step_id=w.step_ids[0], group_class_id=long_class))
    deliver(database, booking_created(long_booking, long_class, step_id=w.step_ids[0], when=at(0)))
    assert progress(database, w, 1)["booking_id"] == long_booking
    result = deliver(database, class_upserted(long_class, status="cancelled", when=at(30)))
    assert result.outcome is Outcome.PROCESSED, result
    assert progress(database, w, 1)["status"].value == "unbooked"
    with database.session_scope() as s:
        causes = s.scalars(select(TransitionLog.cause).where(TransitionLog.cause.like("class_cancelled:%"))).all()
    assert f"class_cancelled:booking:{long_booking}" in causes and max(map(len, causes)) <= 128


# --------------------------------------------------------------------------- a booking delivered after the money moved


def _money(database, w, move):
    from datetime import timedelta

    from db.models import StudentCourseEnrollment
    from tasks.enrollments import services as enrollments

    with database.session_scope() as s:
        enrollment = s.get(StudentCourseEnrollment, w.enrollment_id)
        enrollment.activated_at = at(0) - timedelta(days=1)
        getattr(enrollments, move)(session=s, enrollment=enrollment, cause=f"test:{move}", reason="test")


def test_a_booking_made_before_a_suspension_but_delivered_after_it_stands(database):
    """Wrong order across sources: the dispute (processed now) came after the booking (made at T0)."""
    w = world(database)
    _money(database, w, "suspend")
    event = booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0))
    deliver(database, event)
    deliver(database, twin(event))
    assert progress(database, w, 1)["booking_id"] == "bk_1" and rejections(database) == {}


def test_a_booking_made_after_the_suspension_is_refused(database):
    from datetime import datetime, timedelta, timezone

    w = world(database)
    _money(database, w, "suspend")
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=later))
    assert rejections(database) == {"bk_1": "enrollment_suspended"}


def test_a_booking_made_before_a_revocation_but_delivered_after_it_ends_as_in_order(database):
    """Booked at T0, attended, then refunded — delivered refund, booking, attendance: the attended step
    stays on record, exactly as when delivered in order."""
    in_order, shuffled = world(database), None
    deliver(database, booking_created("bk_1", in_order.option(1), step_id=in_order.step_ids[0], when=at(0)))
    deliver(database, booking_created("bk_2", in_order.option(2), step_id=in_order.step_ids[1], when=at(1)))
    deliver(database, booking_created("bk_3", in_order.option(3), step_id=in_order.step_ids[2], when=at(2)))
    deliver(database, attendance("bk_1", "attended", when=at(100)))
    deliver(database, booking_cancelled("bk_2", within_policy=True, when=at(101)))
    _money(database, in_order, "revoke")
    want = state(database, in_order)
    from tests.conftest import _truncate

    _truncate(database)
    shuffled = world(database)
    _money(database, shuffled, "revoke")
    deliver(database, attendance("bk_1", "attended", when=at(100)))
    deliver(database, booking_cancelled("bk_2", within_policy=True, when=at(101)))
    for n in (3, 2, 1):
        deliver(database, booking_created(f"bk_{n}", shuffled.option(n), step_id=shuffled.step_ids[n - 1],
                                          when=at(n - 1)))
    got = state(database, shuffled)
    assert got == want
    assert want["steps"] == {1: ("completed", "bk_1", shuffled.option(1)), 2: ("cancelled", None, None),
                             3: ("cancelled", "bk_3", shuffled.option(3))}
    assert rejections(database) == {}


def test_a_booking_made_before_a_revocation_stays_on_that_enrollment_after_the_course_is_bought_again(database):
    """Booked at T0, then refunded, then the course bought again; the booking delivered last. Before: it was
    recorded on the new enrollment (made after it), booking a step there and mailing a confirmation; in order
    it is on the revoked enrollment, whose step the revocation cancelled, and the new one is untouched."""
    from datetime import datetime, timedelta, timezone

    from db.models import Booking, StudentCourseEnrollment, StudentCourseProgress
    from tests import factories

    w = world(database)
    _money(database, w, "revoke")
    with database.session_scope() as s:
        again = factories.enrollment(s, s.get(factories.Student, w.student_id),
                                     s.get(factories.CourseProgram, w.program_id), session_id="cs_again")
        again.activated_at = datetime.now(timezone.utc) + timedelta(seconds=1)
        again_id = again.id
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0)))
    with database.session_scope() as s:
        assert s.get(Booking, "bk_1").enrollment_id == w.enrollment_id
        assert set(s.scalars(select(StudentCourseProgress.status).where(
            StudentCourseProgress.enrollment_id == again_id))) == {ProgressStatus.UNBOOKED}
        assert s.get(StudentCourseEnrollment, again_id).status.value == "active"
    assert progress(database, w, 1)["status"].value == "cancelled"
    assert outbox_rows(database, "booking_confirmed") == []


def test_a_completed_enrollment_suspended_and_reinstated_is_the_same_completion(database):
    """Before: the reinstatement completed it again: a second `enrollment.completed`, and `completed_at` moved to
    the reinstatement's time (the reports count completions by it)."""
    from db.models import StudentCourseEnrollment
    from tasks.enrollments import services as enrollments

    w = world(database, steps=1)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0]))
    deliver(database, attendance("bk_1", when=at(60)))
    with database.session_scope() as s:
        enrollment = s.get(StudentCourseEnrollment, w.enrollment_id)
        completed_at = enrollment.completed_at
        enrollments.suspend(session=s, enrollment=enrollment, cause="dispute:dp_1", reason="dispute_opened")
    for _ in range(2):  # twice: the second changes nothing
        with database.session_scope() as s:
            enrollments.reinstate(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id),
                                  cause="dispute:dp_1:closed", reason="dispute_won")
    with database.session_scope() as s:
        enrollment = s.get(StudentCourseEnrollment, w.enrollment_id)
        assert (enrollment.status.value, enrollment.completed_at) == ("completed", completed_at)
    assert len(outbox_rows(database, "enrollment.completed")) == 1
    [reinstated] = outbox_rows(database, "enrollment.reinstated")
    assert reinstated.payload["data"]["status"] == "completed"


def test_a_step_added_while_suspended_makes_the_next_completion_a_new_one(database):
    """A completed enrollment, suspended, gains a step: reinstated it is active again, and completing the new
    step is announced with its own enrollment.completed and time."""
    from datetime import timedelta

    from db.models import CourseStep, CourseStepOption, StudentCourseEnrollment
    from tasks.enrollments import services as enrollments
    from tests import factories

    w = world(database, steps=1)
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0], when=at(0)))
    deliver(database, attendance("bk_1", when=at(60)))
    with database.session_scope() as s:
        first_completion = s.get(StudentCourseEnrollment, w.enrollment_id).completed_at
        enrollments.suspend(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id),
                            cause="dispute:dp_1", reason="dispute_opened")
    with database.session_scope() as s:
        step = CourseStep(program_id=w.program_id, position=2, label="SFZ-2", title="Step 2")
        s.add(step)
        s.flush()
        s.add(CourseStepOption(program_id=w.program_id, step_id=step.id, group_class_id="gc_SFZ_2_0"))
        factories.group_class(s, id="gc_SFZ_2_0", starts_in=timedelta(days=2))
        new_step = step.id
        enrollments.provision(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id),
                              cause="course.save")
    with database.session_scope() as s:
        enrollments.reinstate(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id),
                              cause="dispute:dp_1:closed", reason="dispute_won")
    [reinstated] = outbox_rows(database, "enrollment.reinstated")
    assert reinstated.payload["data"]["status"] == "active"
    deliver(database, booking_created("bk_2", "gc_SFZ_2_0", step_id=new_step, when=at(120)))
    deliver(database, attendance("bk_2", when=at(180)))
    with database.session_scope() as s:
        enrollment = s.get(StudentCourseEnrollment, w.enrollment_id)
        assert enrollment.status.value == "completed" and enrollment.completed_at > first_completion
    assert len(outbox_rows(database, "enrollment.completed")) == 2


def test_the_booking_mails_render_with_the_context_we_write(database):
    """The contexts written here render with the real templates (tasks.messaging.mail), naming the step label."""
    from tasks.messaging import mail

    w = world(database, group_credits=1)
    book(database, w)
    deliver(database, booking_cancelled("bk_1", within_policy=True))
    book(database, w, "bk_2", when=at(40))
    deliver(database, class_upserted(w.option(1), status="cancelled", title="Class 1", when=at(50)))
    topics = {"booking_confirmed", "booking_cancelled", "class_cancelled"}
    for topic in topics:
        for row in outbox_rows(database, topic):
            rendered = mail.render(row.payload["template"], row.payload["context"])
            assert "SFZ-1" in rendered.subject + rendered.text, (topic, rendered.subject)


def test_a_credit_booking_waits_for_the_older_credit_bookings_cancel_in_flight(database):
    """Wrong order: with one credit, the platform cancelled bk_1 within policy and then booked bk_2 with the
    credit that came back; bk_2 arrives before the cancel and waits for it instead of being refused."""
    world(database, group_credits=1)
    deliver(database, booking_created("bk_1", "gc_a", credit_type="group", when=at(0)))
    newer = booking_created("bk_2", "gc_b", credit_type="group", when=at(20))
    assert deliver(database, newer).outcome is Outcome.WAITING
    assert inbox_row(database, newer).waiting_for == "booking-ended:bk_1"
    assert deliver(database, booking_cancelled("bk_1", within_policy=True, when=at(10))).outcome is Outcome.PROCESSED
    assert inbox_row(database, newer).status == InboxStatus.PROCESSED
    assert booking(database, "bk_2").status.value == "active" and booking(database, "bk_1").status.value == "cancelled"
    assert balances(database)["group"] == 0 and rejections(database) == {}
    deliver(database, twin(newer))  # the same booking sent again: nothing spent twice
    assert balances(database)["group"] == 0 and rejections(database) == {}


@pytest.mark.parametrize("ending", ["late cancel", "hold window passed"])
def test_a_credit_booking_no_credit_comes_back_for_is_refused(database, ending):
    from datetime import timedelta

    from db.models import InboxEvent
    from db.types import utcnow
    from tests import inbox_api as inbox

    world(database, group_credits=1)
    deliver(database, booking_created("bk_1", "gc_a", credit_type="group", when=at(0)))
    newer = booking_created("bk_2", "gc_b", credit_type="group", when=at(20))
    inbox_id = store(database, newer)
    assert run(database, inbox_id).outcome is Outcome.WAITING
    if ending == "late cancel":  # outside policy: the credit stays spent
        deliver(database, booking_cancelled("bk_1", within_policy=False, when=at(10)))
    else:
        with database.session_scope() as s:
            s.get(InboxEvent, inbox_id).received_at = utcnow() - timedelta(minutes=11)
            assert inbox.requeue_waiting(session=s) == [inbox_id]  # the scheduled retry of parked events
        assert run(database, inbox_id).outcome is Outcome.PROCESSED
    assert rejections(database) == {"bk_2": "no_credit"} and balances(database)["group"] == 0


def test_a_credit_booking_older_than_the_one_that_spent_the_last_credit_is_refused_at_once(database):
    world(database, group_credits=1)
    deliver(database, booking_created("bk_2", "gc_b", credit_type="group", when=at(20)))
    assert deliver(database, booking_created("bk_1", "gc_a", credit_type="group", when=at(0))).outcome \
        is Outcome.PROCESSED
    assert rejections(database) == {"bk_1": "no_credit"}


@pytest.mark.parametrize("end", ["cancel_outside_policy", "no_show"])
@pytest.mark.parametrize("late", [False, True], ids=["ended_before_the_revocation", "end_delivered_after"])
def test_a_missed_step_through_an_admins_revocation_and_reinstatement_stays_missed(database, end, late):
    """Before: the step missed before an admin revoked was reopened `unbooked` by the reinstatement, naming no
    booking; with the booking's end delivered after the reinstatement it was `missed`, naming it."""
    from db.models import StudentCourseEnrollment
    from tasks.purchases import manual

    w = world(database)
    with database.session_scope() as s:
        s.get(StudentCourseEnrollment, w.enrollment_id).activated_at = at(-60)
    book(database, w)
    ending = booking_cancelled("bk_1", within_policy=False, when=at(10)) if end == "cancel_outside_policy" \
        else attendance("bk_1", "no_show", when=at(60))
    if not late:
        deliver(database, ending)
    for action, cause in (("revoke", "admin:1"), ("reinstate", "admin:2")):
        with database.session_scope() as s:
            getattr(manual, action)(session=s, enrollment_id=w.enrollment_id, cause=cause)
    if late:
        deliver(database, ending)
    assert (progress(database, w, 1)["status"].value, progress(database, w, 1)["booking_id"]) == ("missed", "bk_1")
    book(database, w, "bk_2", when=at(90))  # a missed step is booked again
    assert (progress(database, w, 1)["status"].value, progress(database, w, 1)["booking_id"]) == ("booked", "bk_2")


@pytest.mark.parametrize("order", ["in_order", "revoked_then_class_cancelled_then_the_cancel"])
def test_a_step_cancelled_outside_policy_before_its_class_was_reopens_missed_whatever_the_order(database, order):
    """The student's cancel outside policy (t10), the class's cancellation (t50), an admin's revocation, then the
    reinstatement. Before: revoked first, the class's cancellation let the cancelled step's booking go, and the
    student's earlier cancel, delivered last, left the step naming none: the reinstatement reopened it unbooked,
    where in order it is missed, naming the booking."""
    from db.models import StudentCourseEnrollment
    from tasks.purchases import manual

    w = world(database)
    with database.session_scope() as s:
        s.get(StudentCourseEnrollment, w.enrollment_id).activated_at = at(-60)
    book(database, w)

    def revoke():
        with database.session_scope() as s:
            manual.revoke(session=s, enrollment_id=w.enrollment_id, cause="admin:1")

    student_cancel = lambda: deliver(database, booking_cancelled("bk_1", within_policy=False, when=at(10)))  # noqa: E731
    class_cancel = lambda: deliver(database, class_upserted(w.option(1), status="cancelled", when=at(50)))  # noqa: E731
    for step in ((student_cancel, class_cancel, revoke) if order == "in_order"
                 else (revoke, class_cancel, student_cancel)):
        step()
    with database.session_scope() as s:
        manual.reinstate(session=s, enrollment_id=w.enrollment_id, cause="admin:2")
    assert (progress(database, w, 1)["status"].value, progress(database, w, 1)["booking_id"]) == ("missed", "bk_1")


@pytest.mark.parametrize("end", ["cancel", "attendance"])
def test_a_cancel_or_attendance_dated_after_it_reached_us_is_taken_at_its_arrival(database, end):
    """A sender's clock running ahead: `occurred_at` was already taken as the arrival; the cancel's `cancelled_at`
    and the attendance's `marked_at` were stored as sent, a day ahead (and a credit spent again would be judged
    against its lot's expiry then)."""
    from datetime import timedelta

    from db.models import InboxEvent
    from db.types import utcnow

    w = world(database)
    book(database, w)
    ahead = utcnow() + timedelta(days=1)
    event = booking_cancelled("bk_1", within_policy=False, when=ahead) if end == "cancel" \
        else attendance("bk_1", "attended", when=ahead)
    event["occurred_at"] = utcnow().isoformat()
    deliver(database, event)
    with database.session_scope() as s:
        received = s.scalar(select(InboxEvent.received_at).where(InboxEvent.event_id == event["id"]))
    stored = booking(database, "bk_1")
    assert (stored.cancelled_at if end == "cancel" else stored.attendance_marked_at) == received
