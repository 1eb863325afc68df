"""Step reminders: one per (enrollment, step, window), never for booked/completed steps, none when off."""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest

from sqlalchemy import func, select, update

from db.enums import ClassStatus, EnrollmentStatus, OutboxStatus, ProgressStatus
from db.models import (
    CourseStep,
    CourseStepOption,
    GroupClass,
    OutboxMessage,
    ReminderLog,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
    TransitionLog,
)
from db.types import utcnow
from tasks.enrollments import reminders
from tasks.enrollments.reminders import send_reminders, window_key
from tasks.messaging import delivery, mail
from tasks.messaging.outbox import add_mail
from tests import factories
from tests.conftest import make_settings
from tests.tasks.bookings.bookings_support import class_upserted, deliver, twin
from tests.tasks.messaging.outbox_servers import smtp_sink  # noqa: F401  (fixture)


def _settings(database, enabled=True, days=7):
    return make_settings(database.url, reminders_enabled=enabled, reminder_window_days=days)


def _setup(session):
    """SFZ with 4 steps: 1 booked, 2 unbooked (class in 3 days), 3 unbooked (class in 20 days), 4 completed."""
    program = factories.program(session, steps=4)
    days = {1: 2, 2: 3, 3: 20, 4: 1}
    for position, in_days in days.items():
        factories.group_class(session, id=f"gc_SFZ_{position}_0", title=f"Class {position}",
                              starts_in=timedelta(days=in_days))
    student = factories.student(session, timezone="Europe/Berlin")
    enrollment = factories.enrollment(session, student, program)
    progress = {p.step_id: p for p in session.scalars(select(StudentCourseProgress)
                                                      .where(StudentCourseProgress.enrollment_id == enrollment.id))}
    steps = {s.position: s for s in program.steps}
    progress[steps[1].id].status = ProgressStatus.BOOKED
    progress[steps[4].id].status = ProgressStatus.COMPLETED
    session.flush()
    return program, enrollment, steps


def _mails(database):
    with database.session_scope() as s:
        return s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "step_reminder")
                         .order_by(OutboxMessage.id)).all()


def test_two_runs_in_one_window_send_one_reminder_per_eligible_step(database):
    with database.session_scope() as s:
        _setup(s)
    settings = _settings(database)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 1
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 0
    mails = _mails(database)
    assert len(mails) == 1
    context = mails[0].payload["context"]
    assert mails[0].recipient == "stu1@example.test"
    assert (context["step_label"], context["class_id"], context["timezone"]) == ("SFZ-2", "gc_SFZ_2_0", "Europe/Berlin")
    assert context["expires_at"] == context["starts_at"]  # not sent once its class has started
    with database.session_scope() as s:
        assert s.scalar(select(ReminderLog.window_key)) == window_key("gc_SFZ_2_0")


def test_a_wider_window_reaches_the_later_step_once(database):
    with database.session_scope() as s:
        _setup(s)
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 1
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database, days=30)) == 1  # SFZ-3 only
    assert sorted(m.payload["context"]["step_label"] for m in _mails(database)) == ["SFZ-2", "SFZ-3"]


def test_no_reminders_with_the_flag_off(database):
    with database.session_scope() as s:
        _setup(s)
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database, enabled=False)) == 0
    assert _mails(database) == []


def test_no_reminders_for_inactive_enrollments_or_students_without_email(database):
    with database.session_scope() as s:
        _, enrollment, _ = _setup(s)
        enrollment.status = EnrollmentStatus.SUSPENDED
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 0
    with database.session_scope() as s:
        s.get(StudentCourseEnrollment, enrollment.id).status = EnrollmentStatus.ACTIVE
        s.get(Student, "stu_1").email = None
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 0
    assert _mails(database) == []


def test_a_step_booked_after_its_reminder_is_not_reminded_again_and_a_new_window_is(database):
    with database.session_scope() as s:
        _, enrollment, steps = _setup(s)
        step2 = steps[2].id
    settings = _settings(database)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 1
    # the first class of SFZ-2 passes; a later one comes into the window: a new window, a new reminder
    later = utcnow() + timedelta(days=4)
    with database.session_scope() as s:
        program_id = s.get(CourseStep, step2).program_id
        factories.group_class(s, id="gc_SFZ_2_1", title="Class 2b", starts_in=timedelta(days=6))
        s.add(CourseStepOption(program_id=program_id, step_id=step2, group_class_id="gc_SFZ_2_1"))
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=later) == 1
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=later) == 0
    # booked now: never reminded again
    with database.session_scope() as s:
        s.scalar(select(StudentCourseProgress).where(StudentCourseProgress.step_id == step2)).status = \
            ProgressStatus.BOOKED
        factories.group_class(s, id="gc_SFZ_2_2", starts_in=timedelta(days=9))
        s.add(CourseStepOption(program_id=program_id, step_id=step2, group_class_id="gc_SFZ_2_2"))
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=utcnow() + timedelta(days=7)) == 0
    labels = [(m.payload["context"]["step_label"], m.payload["context"]["class_id"]) for m in _mails(database)]
    assert labels == [("SFZ-2", "gc_SFZ_2_0"), ("SFZ-2", "gc_SFZ_2_1")]


def test_a_class_moved_or_an_earlier_one_added_is_not_a_new_window(database):
    """The window was named by the earliest class's start: moving that class an hour, or adding an earlier
    class, sent the student a second reminder for a step whose class had not passed."""
    with database.session_scope() as s:
        _, _, steps = _setup(s)
        step2 = steps[2].id
    settings = _settings(database)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 1
    with database.session_scope() as s:
        s.get(GroupClass, "gc_SFZ_2_0").starts_at += timedelta(hours=1)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 0
    with database.session_scope() as s:  # an earlier class of the step
        factories.group_class(s, id="gc_SFZ_2_early", starts_in=timedelta(days=1))
        s.add(CourseStepOption(program_id=s.get(CourseStep, step2).program_id, step_id=step2,
                               group_class_id="gc_SFZ_2_early"))
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 0
    # the class reminded about is cancelled: the step's next class in range is a new window
    with database.session_scope() as s:
        s.get(GroupClass, "gc_SFZ_2_0").status = ClassStatus.CANCELLED
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 1
    assert [m.payload["context"]["class_id"] for m in _mails(database)] == ["gc_SFZ_2_0", "gc_SFZ_2_early"]


def test_a_reminder_keyed_by_its_class_start_counts_until_that_time(database):
    """Reminders written before the windows were named by their class are keyed `start:<time>`: one still to come
    holds the step's next reminder back, one gone by does not."""
    with database.session_scope() as s:
        _, enrollment, steps = _setup(s)
        start = s.get(GroupClass, "gc_SFZ_2_0").starts_at
        s.add(ReminderLog(enrollment_id=enrollment.id, step_id=steps[2].id,
                          window_key=f"start:{start:%Y%m%dT%H%M}Z"))
    settings = _settings(database)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 0
    with database.session_scope() as s:  # that class passed; a later one is in range
        factories.group_class(s, id="gc_SFZ_2_1", starts_in=timedelta(days=6))
        s.add(CourseStepOption(program_id=s.get(CourseStep, steps[2].id).program_id, step_id=steps[2].id,
                               group_class_id="gc_SFZ_2_1"))
    assert send_reminders(unit_of_work=database.session_scope, settings=settings,
                          now=start + timedelta(minutes=1)) == 1


def _relay(database, settings, now) -> list[str]:
    """One relay run at `now`, as workers.jobs.relay_outbox makes it: claim, send outside a transaction, record."""
    with database.session_scope() as s:
        jobs = delivery.claim_due(session=s, settings=settings, now=now)
    with delivery.Sender(settings, timeout=5) as sender:
        results = [(job, sender.send(job, now=now)) for job in jobs]
    with database.session_scope() as s:
        return [status.value for status in delivery.record_all(session=s, results=results, now=now)]


def _moves(database, message_id: int) -> list[tuple[str | None, str, str | None]]:
    with database.session_scope() as s:
        return [(m.from_status, m.to_status, m.cause) for m in s.scalars(
            select(TransitionLog).where(TransitionLog.entity == "outbox", TransitionLog.entity_id == str(message_id))
            .order_by(TransitionLog.id))]


def _move_class(database, start, now, title="Class 2", **kw) -> None:
    event = class_upserted("gc_SFZ_2_0", title=title, starts_at=start, when=now, **kw)
    assert deliver(database, event).outcome.value == "processed"
    assert deliver(database, twin(event)).outcome.value == "processed"  # the same update twice: nothing more


def _sent_once_more(database, settings, at) -> None:
    """The next run queues one fresh reminder and the relay sends it; a later run queues nothing more."""
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=at) == 1
    assert _relay(database, settings, at) == ["sent"]
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=at + timedelta(hours=1)) == 0


def _reminded_once_more(database, settings, smtp_sink, at, new_start):  # noqa: F811
    """The next run reminds the step again, naming the class's current time; that mail goes; further runs send
    nothing more."""
    _sent_once_more(database, settings, at)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=at) == 0
    ended, fresh = _mails(database)
    assert ended.status.value == "expired" and ended.last_error.startswith("class moved to ")
    assert fresh.status.value == "sent"
    assert fresh.payload["context"]["starts_at"] == fresh.payload["context"]["expires_at"] == new_start.isoformat()
    (sent,) = smtp_sink.messages  # only the fresh one ever left
    assert sent["Message-ID"] == f"<{fresh.public_id}@coursepipe>"
    assert mail.local_time(new_start.isoformat(), "Europe/Berlin") in sent.get_body(("plain",)).get_content()
    with database.session_scope() as s:  # the ended reminder holds no window; the one sent stands for the class
        assert s.scalars(select(ReminderLog.window_key).order_by(ReminderLog.id)).all() == [
            reminders.expired_key(ended.payload["context"]["reminder_id"]), window_key("gc_SFZ_2_0")]
    return ended


def _one_queued(database, smtp_sink):  # noqa: F811
    """`_setup`, and a run that queues SFZ-2's reminder about its class gc_SFZ_2_0 (in 3 days): that class's start,
    the settings (SMTP at `smtp_sink`) and the run's clock."""
    with database.session_scope() as s:
        _setup(s)
        start = s.get(GroupClass, "gc_SFZ_2_0").starts_at
    settings = make_settings(database.url, reminders_enabled=True, reminder_window_days=7, smtp_url=smtp_sink.url)
    now = utcnow()
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=now) == 1
    return start, settings, now


def test_a_reminder_queued_before_its_class_moved_earlier_is_not_sent_and_the_step_is_reminded_of_the_new_time(
        database, smtp_sink):  # noqa: F811
    """SMTP down, the platform moved the class a day earlier: the queued reminder still expired at the old, later
    start, so it could arrive after the class had started, naming the wrong time."""
    old_start, settings, now = _one_queued(database, smtp_sink)
    smtp_sink.stop()
    assert _relay(database, settings, now + timedelta(minutes=1)) == ["pending"]  # SMTP down: tried again later
    new_start = old_start - timedelta(days=1)
    _move_class(database, new_start, now)
    (queued,) = _mails(database)
    assert queued.status.value == "expired" and queued.attempts == 1
    assert _moves(database, queued.id)[-1] == ("pending", "expired", "class moved")
    smtp_sink.start()
    after = now + timedelta(minutes=5)
    assert _relay(database, settings, after) == []  # nothing left to send
    _reminded_once_more(database, settings, smtp_sink, after, new_start)


def test_a_reminder_queued_before_its_class_moved_later_is_not_sent_and_the_step_is_reminded_of_the_new_time(
        database, smtp_sink):  # noqa: F811
    """SMTP down, the class moved two days later, SMTP up again before its old start: the queued reminder went out
    naming the old time."""
    old_start, settings, now = _one_queued(database, smtp_sink)
    smtp_sink.stop()
    assert _relay(database, settings, now + timedelta(minutes=1)) == ["pending"]
    new_start = old_start + timedelta(days=2)
    _move_class(database, new_start, now)
    smtp_sink.start()
    after = now + timedelta(hours=1)  # well before the old start
    assert _relay(database, settings, after) == []
    ended = _reminded_once_more(database, settings, smtp_sink, after, new_start)
    assert ended.attempts == 1 and ended.payload["context"]["starts_at"] == old_start.isoformat()


def test_a_reminder_queued_before_its_class_was_cancelled_is_not_sent_and_the_next_class_is_reminded_of(
        database, smtp_sink):  # noqa: F811
    """The platform cancelled the class a waiting reminder tells the student to book (same start): the reminder
    still went out. It ends unsent; the next run reminds the step of its other class, once."""
    with database.session_scope() as s:
        _, _, steps = _setup(s)
        start = s.get(GroupClass, "gc_SFZ_2_0").starts_at
        other = factories.group_class(s, id="gc_SFZ_2_1", title="Class 2 again", starts_in=timedelta(days=5))
        s.add(CourseStepOption(program_id=s.get(CourseStep, steps[2].id).program_id, step_id=steps[2].id,
                               group_class_id="gc_SFZ_2_1"))
        other_start = other.starts_at
    settings = make_settings(database.url, reminders_enabled=True, reminder_window_days=7, smtp_url=smtp_sink.url)
    now = utcnow()
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=now) == 1
    (queued,) = _mails(database)
    assert queued.payload["context"]["class_id"] == "gc_SFZ_2_0"
    _move_class(database, start, now, status="cancelled")
    (queued,) = _mails(database)
    assert queued.status.value == "expired" and queued.last_error.startswith("class cancelled before it was sent")
    assert _moves(database, queued.id)[-1] == ("pending", "expired", "class cancelled")
    after = now + timedelta(minutes=5)
    assert _relay(database, settings, after) == []
    _sent_once_more(database, settings, after)
    _, fresh = _mails(database)
    assert (fresh.payload["context"]["class_id"], fresh.payload["context"]["starts_at"]) \
        == ("gc_SFZ_2_1", other_start.isoformat())
    (sent,) = smtp_sink.messages  # only the reminder of the class that runs ever left
    assert sent["Message-ID"] == f"<{fresh.public_id}@coursepipe>"


def test_a_class_update_that_keeps_its_start_leaves_its_queued_reminder_alone(database, smtp_sink):  # noqa: F811
    start, settings, now = _one_queued(database, smtp_sink)
    (queued,) = _mails(database)
    _move_class(database, start, now, seats_taken=2, title="Class 2, new room")  # seats and title, same start
    assert _mails(database)[0].status.value == "pending" and _moves(database, queued.id) == []
    assert _relay(database, settings, now + timedelta(minutes=1)) == ["sent"]
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=now + timedelta(hours=1)) == 0
    assert len(smtp_sink.messages) == 1


def test_a_reminder_being_sent_when_its_class_moves_is_its_senders(database, smtp_sink):  # noqa: F811
    """A `sending` mail is held by its relay: the move leaves it, and what that relay records stands."""
    old_start, settings, now = _one_queued(database, smtp_sink)
    with database.session_scope() as s:
        (job,) = delivery.claim_due(session=s, settings=settings, now=now + timedelta(minutes=1))
    _move_class(database, old_start + timedelta(days=1), now)
    assert _mails(database)[0].status.value == "sending"
    with delivery.Sender(settings, timeout=5) as sender:
        outcome = sender.send(job, now=now)
    with database.session_scope() as s:
        assert delivery.record(session=s, job=job, outcome=outcome, now=now).value == "sent"
    assert len(smtp_sink.messages) == 1


def _attempt_with_smtp_down(database, settings, smtp_sink, job, now) -> str:  # noqa: F811
    """The claimed `job` sent while the SMTP server is down, its outcome recorded (the server up again after):
    the status it is left in."""
    smtp_sink.stop()
    with delivery.Sender(settings, timeout=5) as sender:
        outcome = sender.send(job, now=now)
    with database.session_scope() as s:
        status = delivery.record(session=s, job=job, outcome=outcome, now=now).value
    smtp_sink.start()
    return status


def test_a_reminder_being_sent_when_its_class_moves_and_failing_is_not_sent_later_naming_the_old_time(
        database, smtp_sink):  # noqa: F811
    """Claimed by a relay (`sending`) when the class moved, its attempt then failed (SMTP down): it came back
    `pending` and a later attempt sent it naming the old time, and the step was never reminded of the new one."""
    old_start, settings, now = _one_queued(database, smtp_sink)
    with database.session_scope() as s:
        (job,) = delivery.claim_due(session=s, settings=settings, now=now + timedelta(minutes=1))
    new_start = old_start + timedelta(days=1)
    _move_class(database, new_start, now)
    assert _attempt_with_smtp_down(database, settings, smtp_sink, job, now) == "pending"
    after = now + timedelta(hours=1)  # well before either start
    assert _relay(database, settings, after) == ["expired"]  # made to expire by the move
    _sent_once_more(database, settings, after)
    ended, fresh = _mails(database)
    assert ended.status.value == "expired" and ended.payload["context"]["starts_at"] == old_start.isoformat()
    assert fresh.payload["context"]["starts_at"] == new_start.isoformat()
    (sent,) = smtp_sink.messages  # the failed attempt sent nothing; only the fresh one left
    assert sent["Message-ID"] == f"<{fresh.public_id}@coursepipe>"


def test_a_reminder_written_before_reminders_named_their_row_is_left_to_go_when_its_class_moves(
        database, smtp_sink):  # noqa: F811
    """Such a mail (no `reminder_id`) cannot be set aside once ended: ended, its step was never reminded again.
    It goes as before."""
    with database.session_scope() as s:
        _, enrollment, steps = _setup(s)
        start = s.get(GroupClass, "gc_SFZ_2_0").starts_at
        add_mail(session=s, template="step_reminder", recipient="stu@example.test", enrollment_id=enrollment.id,
                 dedupe_key=f"reminder:{enrollment.id}:{steps[2].id}:{window_key('gc_SFZ_2_0')}",
                 context={"class_id": "gc_SFZ_2_0", "starts_at": start.isoformat(), "expires_at": start.isoformat()})
    now = utcnow()
    _move_class(database, start + timedelta(days=1), now)
    (queued,) = _mails(database)
    assert queued.status.value == "pending" and _moves(database, queued.id) == []


def _class_event(database, start, when, status="scheduled") -> str:
    event = class_upserted("gc_SFZ_2_0", title="Class 2", starts_at=start, when=when, status=status)
    return deliver(database, event).outcome.value


def _class_now(database) -> tuple:
    with database.session_scope() as s:
        group_class = s.get(GroupClass, "gc_SFZ_2_0")
        return group_class.starts_at, group_class.status


def test_an_older_update_arriving_after_a_move_leaves_the_reminder_of_the_new_time(database, smtp_sink):  # noqa: F811
    """Wrong order: the move (later occurred_at) first, then an update written before it, naming the old start.
    The older one is stale: the class keeps its new time and the fresh reminder naming it stays queued."""
    old_start, settings, now = _one_queued(database, smtp_sink)
    new_start = old_start + timedelta(days=1)
    _class_event(database, new_start, now)
    after = now + timedelta(minutes=5)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=after) == 1
    _class_event(database, old_start, now - timedelta(minutes=1))  # written before the move, delivered after
    assert _class_now(database) == (new_start, ClassStatus.SCHEDULED)
    ended, fresh = _mails(database)
    assert ended.status.value == "expired" and fresh.status.value == "pending"
    assert fresh.payload["context"]["starts_at"] == new_start.isoformat() and _moves(database, fresh.id) == []
    assert _relay(database, settings, after) == ["sent"]
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=after) == 0
    assert len(smtp_sink.messages) == 1


def test_a_class_moved_away_and_back_is_reminded_once_of_its_time(database, smtp_sink):  # noqa: F811
    """In order: moved a day later, then back. The first reminder ended with the first move; the next run reminds
    the step once, naming the start the class is back at."""
    start, settings, now = _one_queued(database, smtp_sink)
    _class_event(database, start + timedelta(days=1), now)
    _class_event(database, start, now + timedelta(minutes=1))
    assert _class_now(database) == (start, ClassStatus.SCHEDULED)
    after = now + timedelta(minutes=5)
    _reminded_once_more(database, settings, smtp_sink, after, start)


def test_a_move_and_its_undoing_delivered_in_reverse_leave_the_reminder_as_it_was(database, smtp_sink):  # noqa: F811
    """Wrong order: the move back (later) arrives first and changes nothing; the move away (earlier) is stale. The
    reminder queued for the unchanged start is sent, and only it."""
    start, settings, now = _one_queued(database, smtp_sink)
    _class_event(database, start, now + timedelta(minutes=1))
    _class_event(database, start + timedelta(days=1), now)
    assert _class_now(database) == (start, ClassStatus.SCHEDULED)
    (queued,) = _mails(database)
    assert queued.status.value == "pending" and _moves(database, queued.id) == []
    assert _relay(database, settings, now + timedelta(minutes=5)) == ["sent"]
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=now + timedelta(hours=1)) == 0
    assert len(smtp_sink.messages) == 1


def test_a_class_cancelled_then_scheduled_again_is_reminded_once_more(database, smtp_sink):  # noqa: F811
    """The cancel ends the queued reminder; the class runs after all: the next run reminds the step of it, once."""
    start, settings, now = _one_queued(database, smtp_sink)
    _class_event(database, start, now, status="cancelled")
    after = now + timedelta(minutes=5)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=after) == 0  # nothing to book
    _class_event(database, start, now + timedelta(minutes=1))
    assert _class_now(database) == (start, ClassStatus.SCHEDULED)
    _sent_once_more(database, settings, after)
    ended, fresh = _mails(database)
    assert ended.status.value == "expired" and ended.last_error.startswith("class cancelled")
    assert (fresh.status.value, fresh.payload["context"]["class_id"]) == ("sent", "gc_SFZ_2_0")
    (sent,) = smtp_sink.messages
    assert sent["Message-ID"] == f"<{fresh.public_id}@coursepipe>"


def test_an_older_update_arriving_after_a_cancel_does_not_bring_the_class_or_its_reminders_back(
        database, smtp_sink):  # noqa: F811
    """Wrong order: the cancel first, then an update written before it (scheduled). The class stays cancelled and
    no run reminds the student to book it."""
    start, settings, now = _one_queued(database, smtp_sink)
    _class_event(database, start, now, status="cancelled")
    _class_event(database, start, now - timedelta(minutes=1))
    assert _class_now(database) == (start, ClassStatus.CANCELLED)
    after = now + timedelta(minutes=5)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=after) == 0
    assert _relay(database, settings, after) == []
    (ended,) = _mails(database)
    assert ended.status.value == "expired" and smtp_sink.messages == []


def _two_options_queued(database, smtp_sink):  # noqa: F811
    """`_setup` with a second class for SFZ-2 (in 5 days), and a run that queues SFZ-2's reminder: about
    gc_SFZ_2_0, listing both."""
    with database.session_scope() as s:
        _, _, steps = _setup(s)
        factories.group_class(s, id="gc_SFZ_2_1", title="Class 2 again", starts_in=timedelta(days=5))
        s.add(CourseStepOption(program_id=s.get(CourseStep, steps[2].id).program_id, step_id=steps[2].id,
                               group_class_id="gc_SFZ_2_1"))
        starts = {c: s.get(GroupClass, c).starts_at for c in ("gc_SFZ_2_0", "gc_SFZ_2_1")}
    settings = make_settings(database.url, reminders_enabled=True, reminder_window_days=7, smtp_url=smtp_sink.url)
    now = utcnow()
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=now) == 1
    (queued,) = _mails(database)
    assert [o["class_id"] for o in queued.payload["context"]["options"]] == ["gc_SFZ_2_0", "gc_SFZ_2_1"]
    return starts, settings, now


def _listed(message) -> dict:
    return {o["class_id"]: o["starts_at"] for o in message.payload["context"]["options"]}


def test_a_reminder_listing_a_class_that_moved_is_not_sent_and_the_step_is_reminded_with_the_new_time(
        database, smtp_sink):  # noqa: F811
    """Only the class a reminder was about was watched: the other class it lists moved, and the mail still went
    out giving that class its old time."""
    starts, settings, now = _two_options_queued(database, smtp_sink)
    new_start = starts["gc_SFZ_2_1"] + timedelta(hours=2)
    event = class_upserted("gc_SFZ_2_1", title="Class 2 again", starts_at=new_start, when=now)
    assert deliver(database, event).outcome.value == "processed"
    (queued,) = _mails(database)
    assert queued.status.value == "expired" and _moves(database, queued.id)[-1] == ("pending", "expired", "class moved")
    after = now + timedelta(minutes=5)
    assert _relay(database, settings, after) == []
    _sent_once_more(database, settings, after)
    _, fresh = _mails(database)
    assert fresh.payload["context"]["class_id"] == "gc_SFZ_2_0"
    assert _listed(fresh) == {"gc_SFZ_2_0": starts["gc_SFZ_2_0"].isoformat(), "gc_SFZ_2_1": new_start.isoformat()}
    (sent,) = smtp_sink.messages
    assert sent["Message-ID"] == f"<{fresh.public_id}@coursepipe>"
    assert mail.local_time(new_start.isoformat(), "Europe/Berlin") in sent.get_body(("plain",)).get_content()


def test_a_reminder_listing_a_class_that_was_cancelled_is_not_sent_and_the_next_lists_only_what_runs(
        database, smtp_sink):  # noqa: F811
    starts, settings, now = _two_options_queued(database, smtp_sink)
    event = class_upserted("gc_SFZ_2_1", title="Class 2 again", starts_at=starts["gc_SFZ_2_1"], when=now,
                           status="cancelled")
    assert deliver(database, event).outcome.value == "processed"
    (queued,) = _mails(database)
    assert queued.status.value == "expired" and queued.last_error.startswith("class cancelled")
    after = now + timedelta(minutes=5)
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=after) == 1
    _, fresh = _mails(database)
    assert _listed(fresh) == {"gc_SFZ_2_0": starts["gc_SFZ_2_0"].isoformat()}


def test_an_update_of_a_listed_class_that_keeps_its_start_leaves_the_reminder_alone(database, smtp_sink):  # noqa: F811
    starts, settings, now = _two_options_queued(database, smtp_sink)
    event = class_upserted("gc_SFZ_2_1", title="Class 2 again, room B", starts_at=starts["gc_SFZ_2_1"], when=now,
                           seats_taken=4)
    assert deliver(database, event).outcome.value == "processed"
    (queued,) = _mails(database)
    assert queued.status.value == "pending" and _moves(database, queued.id) == []


@pytest.mark.parametrize("moved, by", [("gc_SFZ_2_0", timedelta(hours=-5)), ("gc_SFZ_2_1", timedelta(hours=3))],
                         ids=["the class reminded about", "another class listed"])
def test_a_batch_does_not_queue_a_reminder_for_a_class_moved_since_the_run_began(database, moved, by):
    """The run fixes its classes' times when it starts; a move committed before one of its batches wrote a reminder
    naming (or listing) the old time, after the move had ended the ones already queued."""
    with database.session_scope() as s:
        _, _, steps = _setup(s)
        factories.group_class(s, id="gc_SFZ_2_1", title="Class 2 again", starts_in=timedelta(days=5))
        s.add(CourseStepOption(program_id=s.get(CourseStep, steps[2].id).program_id, step_id=steps[2].id,
                               group_class_id="gc_SFZ_2_1"))
        new_start = s.get(GroupClass, moved).starts_at + by
    settings = _settings(database)
    now = utcnow()
    with database.session_scope() as s:
        run = reminders.plan(session=s, settings=settings, now=now)
        (first, last), = reminders.batches(session=s, run=run)
    assert deliver(database, class_upserted(moved, starts_at=new_start, when=now)).outcome.value == "processed"
    with database.session_scope() as s:
        assert reminders.remind(session=s, run=run, first=first, last=last) == 0
    assert _mails(database) == []
    assert send_reminders(unit_of_work=database.session_scope, settings=settings, now=now) == 1  # the next run
    (fresh,) = _mails(database)
    assert _listed(fresh)[moved] == new_start.isoformat()


def _three_students(session):
    """SFZ with 3 steps, classes of steps 1 and 2 inside the window, and 3 enrollments: 6 reminders due."""
    program = factories.program(session, steps=3)
    for position, in_days in {1: 2, 2: 3, 3: 20}.items():
        factories.group_class(session, id=f"gc_SFZ_{position}_0", starts_in=timedelta(days=in_days))
    enrollments = []
    for n in (1, 2, 3):
        student = factories.student(session, id=f"stu_{n}", email=f"stu{n}@example.test")
        enrollments.append(factories.enrollment(session, student, program, session_id=f"cs_test_{n}").id)
    return enrollments


def test_batches_cut_the_run_by_enrollment_and_never_split_one(database):
    with database.session_scope() as s:
        ids = _three_students(s)
    with database.session_scope() as s:
        run = reminders.plan(session=s, settings=_settings(database))
        assert sorted(run.upcoming) == sorted(
            step.id for step in s.scalars(select(CourseStep).where(CourseStep.position.in_((1, 2)))))
        assert reminders.batches(session=s, run=run, size=1) == [(i, i) for i in ids]
        assert reminders.batches(session=s, run=run, size=3) == [(ids[0], ids[1]), (ids[2], ids[2])]
        assert reminders.batches(session=s, run=run, size=100) == [(ids[0], ids[2])]


def test_a_run_stopped_part_way_keeps_its_batches_and_the_next_run_goes_on(database, monkeypatch):
    with database.session_scope() as s:
        ids = _three_students(s)
    monkeypatch.setattr(reminders, "BATCH", 2)  # one enrollment (two steps) a batch
    units = []

    @contextmanager
    def stopped_at_the_third_batch():
        units.append(None)
        if len(units) == 4:  # the plan, then two batches
            raise RuntimeError("worker stopped")
        with database.session_scope() as s:
            yield s

    settings = _settings(database)
    with pytest.raises(RuntimeError, match="worker stopped"):
        send_reminders(unit_of_work=stopped_at_the_third_batch, settings=settings)
    assert sorted({m.enrollment_id for m in _mails(database)}) == ids[:2]
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 2
    assert send_reminders(unit_of_work=database.session_scope, settings=settings) == 0
    mails = _mails(database)
    assert sorted((m.enrollment_id, m.payload["context"]["step_label"]) for m in mails) == [
        (i, label) for i in ids for label in ("SFZ-1", "SFZ-2")]
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ReminderLog)) == 6


def test_a_batch_whose_steps_were_booked_since_the_plan_writes_nothing(database):
    with database.session_scope() as s:
        ids = _three_students(s)
    with database.session_scope() as s:
        run = reminders.plan(session=s, settings=_settings(database))
        (first, last), = reminders.batches(session=s, run=run)
    with database.session_scope() as s:
        for progress in s.scalars(select(StudentCourseProgress)):
            progress.status = ProgressStatus.BOOKED
    with database.session_scope() as s:
        assert reminders.remind(session=s, run=run, first=first, last=last) == 0
    assert (first, last) == (ids[0], ids[2])
    assert _mails(database) == []
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ReminderLog)) == 0


def test_an_erasure_while_reminders_are_written_leaves_no_mail_to_the_student(pg_database):
    """The run read the student's address (not erased yet) while the erasure held the row and had looked for
    the student's mails; it wrote the reminder once the erasure committed. The run now reads the students under
    a key-share lock: it waits for the erasure, and the erased student is no longer a candidate."""
    import threading

    from tasks.lifecycle import erasure
    from tests.conftest import while_held

    database = pg_database
    with database.session_scope() as s:
        _setup(s)
    held, release = threading.Event(), threading.Event()

    def erase():
        with database.session_scope() as s:
            erasure.erase_student(session=s, student_id="stu_1")
            held.set()
            assert release.wait(30)

    _, run, waited = while_held(database, erase, lambda: send_reminders(unit_of_work=database.session_scope,
                                                                       settings=_settings(database)),
                                held=held, release=release)
    assert waited, "the reminder run did not wait for the erasure holding its student"
    assert run.result() == 0 and _mails(database) == []
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(ReminderLog)) == 0


def test_a_run_that_queued_many_refreshes_the_logs_statistics(pg_database, monkeypatch):
    """Planned on a reminder_log its statistics still call empty (autovacuum had not come by), the next run read
    the whole log once per candidate: 61 s over 100,000 enrollments (bench/reminders.py). A run that queued at
    least ANALYZE_AFTER reminders now analyzes the table as it ends; a smaller one leaves it to autovacuum."""
    from sqlalchemy import text

    def last_analyzed():
        with pg_database.session_scope() as s:
            s.execute(text("SELECT pg_stat_clear_snapshot()"))
            return s.scalar(text("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'reminder_log'"))

    with pg_database.session_scope() as s:
        _setup(s)
    before = last_analyzed()  # another test of this process may have analyzed it already
    monkeypatch.setattr(reminders, "ANALYZE_AFTER", 2)
    assert send_reminders(unit_of_work=pg_database.session_scope, settings=_settings(pg_database)) == 1
    assert last_analyzed() == before
    monkeypatch.setattr(reminders, "ANALYZE_AFTER", 1)
    with pg_database.session_scope() as s:  # as if reminded about another class: due again
        s.execute(update(ReminderLog).values(window_key="class:another"))
    assert send_reminders(unit_of_work=pg_database.session_scope, settings=_settings(pg_database)) == 1
    assert last_analyzed() not in (None, before)


def test_a_failed_analyze_does_not_fail_a_run_that_queued_its_reminders(database, monkeypatch, caplog):
    def refused(session):
        raise RuntimeError("canceling statement due to statement timeout")

    with database.session_scope() as s:
        _setup(s)
    monkeypatch.setattr(reminders, "ANALYZE_AFTER", 1)
    monkeypatch.setattr(reminders, "refresh_statistics", refused)
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 1
    assert len(_mails(database)) == 1
    assert "could not analyze reminder_log" in caplog.text


def test_a_deleted_course_s_steps_are_not_reminded(database):
    """They cannot be booked (the step guard answers `unknown_course_step`); before, their students were still
    reminded to book them."""
    from tasks.bookings import services as bookings
    from tasks.catalog import services as catalog

    with database.session_scope() as s:
        _, _, steps = _setup(s)
        step2 = steps[2].id
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    with database.session_scope() as s:
        verdict = bookings.step_guard(session=s, student_id="stu_1", course_step_id=step2, class_id="gc_SFZ_2_0")
        assert verdict.reason == "unknown_course_step"
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 0
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.topic == "step_reminder")) == 0


def test_deleting_a_course_ends_its_reminders_still_to_send(database, client, admin_headers):
    """Before: a reminder queued before the delete still went, asking the student to book a step that can no
    longer be booked. `DELETE /admin/courses/<code>` ends it `expired` (not a failure); another course's stays."""
    with database.session_scope() as s:
        _setup(s)
        other = factories.program(s, code="OTH", steps=1)
        factories.group_class(s, id="gc_OTH_1_0", starts_in=timedelta(days=2))
        factories.enrollment(s, s.get(Student, "stu_1"), other, session_id="cs_oth")
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 2
    assert client.delete("/admin/courses/SFZ", headers=admin_headers).status_code == 200
    with database.session_scope() as s:
        mails = {m.payload["context"]["course_code"]: (m.status, m.last_error) for m in s.scalars(
            select(OutboxMessage).where(OutboxMessage.topic == "step_reminder"))}
    assert mails["SFZ"][0] == OutboxStatus.EXPIRED and "course deleted" in mails["SFZ"][1]
    assert mails["OTH"] == (OutboxStatus.PENDING, None)
    assert send_reminders(unit_of_work=database.session_scope, settings=_settings(database)) == 0


def test_a_reminder_being_sent_when_its_course_is_deleted_expires_if_that_attempt_fails(database, smtp_sink):  # noqa: F811
    """A `sending` mail is held by its relay: the delete leaves it to that attempt, and makes it expire at its
    next one (SMTP down at the first), so it does not go later asking for a step that cannot be booked."""
    from tasks.catalog import services as catalog

    _, settings, now = _one_queued(database, smtp_sink)
    with database.session_scope() as s:
        (job,) = delivery.claim_due(session=s, settings=settings, now=now + timedelta(minutes=1))
    with database.session_scope() as s:
        program = catalog.delete_course(session=s, code="SFZ")
        assert reminders.course_deleted(session=s, program_id=program.id, now=now) == 0  # none pending
    assert _mails(database)[0].status.value == "sending"
    assert _attempt_with_smtp_down(database, settings, smtp_sink, job, now) == "pending"
    assert _relay(database, settings, now + timedelta(hours=1)) == ["expired"]
    assert smtp_sink.messages == []
