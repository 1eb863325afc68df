"""Low-seat alerts: one alert per crossing of the threshold, cleared on recovery."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, select

from db.enums import ClassStatus, EnrollmentStatus, OutboxChannel, ProgramStatus
from db.models import AlertLog, CourseStepOption, GroupClass, OutboxMessage
from db.types import utcnow
from tasks.bookings.alerts import check_low_seats
from tests import factories

THRESHOLD = 3


def _course(session, status=ProgramStatus.PUBLISHED, code="SFZ"):
    program = factories.program(session, code=code, steps=2, status=status)
    classes = [factories.group_class(session, id=f"gc_{code}_{p}_0", title=f"{code} class {p}", capacity=10,
                                     timezone="Europe/Berlin") for p in (1, 2)]
    return program, classes


def _seats(database, class_id, taken, threshold=THRESHOLD, scan_all=False):
    with database.session_scope() as s:
        s.get(GroupClass, class_id).seats_taken = taken
        s.flush()
        return check_low_seats(session=s, class_id=None if scan_all else class_id, threshold=threshold)


def _alerts(database):
    with database.session_scope() as s:
        alerts = s.scalars(select(AlertLog).where(AlertLog.kind == "low_seat").order_by(AlertLog.id)).all()
        mails = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "low_seat_alert")
                          .order_by(OutboxMessage.id)).all()
        return alerts, mails


def test_crossing_staying_recovering_and_crossing_again_gives_two_alerts(database):
    with database.session_scope() as s:
        _course(s)
    # 7 left, 2 left (cross), 1, 0 (stay), 6 (recover), 3 (cross again: "at or under"), 2 (stay)
    raised = [_seats(database, "gc_SFZ_1_0", taken) for taken in (3, 8, 9, 10, 4, 7, 8)]
    assert raised == [0, 1, 0, 0, 0, 1, 0]
    alerts, mails = _alerts(database)
    assert len(alerts) == 2 and len(mails) == 2
    assert [a.details["seats_left"] for a in alerts] == [2, 3]
    mail = mails[0]
    assert mail.channel is OutboxChannel.MAIL and mail.recipient == "@admins"
    context = mail.payload["context"]
    assert (context["course_code"], context["step_label"], context["class_id"]) == ("SFZ", "SFZ-1", "gc_SFZ_1_0")
    assert context["starts_at"] and context["timezone"] == "Europe/Berlin" and context["threshold"] == THRESHOLD
    with database.session_scope() as s:
        option = s.scalar(select(CourseStepOption).where(CourseStepOption.group_class_id == "gc_SFZ_1_0"))
        assert option.low_seat_alerted_at is not None


def test_the_same_state_checked_twice_alerts_once(database):
    with database.session_scope() as s:
        _course(s)
    assert _seats(database, "gc_SFZ_2_0", 9) == 1
    assert _seats(database, "gc_SFZ_2_0", 9) == 0
    assert _seats(database, "gc_SFZ_2_0", 9, scan_all=True) == 0  # the periodic scan agrees
    assert len(_alerts(database)[0]) == 1


def test_periodic_scan_finds_every_low_option_and_clears_recovered(database):
    with database.session_scope() as s:
        _course(s)
        _course(s, code="BAC")
        for class_id in ("gc_SFZ_1_0", "gc_BAC_2_0"):
            s.get(GroupClass, class_id).seats_taken = 10
    with database.session_scope() as s:
        assert check_low_seats(session=s, class_id=None, threshold=THRESHOLD) == 2
    with database.session_scope() as s:
        s.get(GroupClass, "gc_SFZ_1_0").seats_taken = 0
    with database.session_scope() as s:
        assert check_low_seats(session=s, class_id=None, threshold=THRESHOLD) == 0
        flags = dict(s.execute(select(CourseStepOption.group_class_id, CourseStepOption.low_seat_alerted_at)).all())
    assert flags["gc_SFZ_1_0"] is None and flags["gc_BAC_2_0"] is not None


def test_draft_courses_alert_only_with_active_enrollments(database):
    with database.session_scope() as s:
        program, _ = _course(s, status=ProgramStatus.DRAFT)
        program_id = program.id
    assert _seats(database, "gc_SFZ_1_0", 9) == 0
    with database.session_scope() as s:
        student = factories.student(s)
        factories.enrollment(s, student, s.get(type(program), program_id), status=EnrollmentStatus.REVOKED)
    assert _seats(database, "gc_SFZ_1_0", 9) == 0
    with database.session_scope() as s:
        student = factories.student(s, id="stu_2", email="s2@example.test")
        factories.enrollment(s, student, s.get(type(program), program_id), session_id="cs_2")
    assert _seats(database, "gc_SFZ_1_0", 9) == 1


@pytest.mark.parametrize("change", ["deleted_option", "cancelled_class", "past_class", "other_threshold"])
def test_no_alert_for_options_that_do_not_count(database, change):
    with database.session_scope() as s:
        _course(s)
        option = s.scalar(select(CourseStepOption).where(CourseStepOption.group_class_id == "gc_SFZ_1_0"))
        group_class = s.get(GroupClass, "gc_SFZ_1_0")
        if change == "deleted_option":
            option.deleted_at = group_class.starts_at - timedelta(days=10)
        elif change == "cancelled_class":
            group_class.status = ClassStatus.CANCELLED
        elif change == "past_class":
            group_class.starts_at -= timedelta(days=30)
    threshold = 1 if change == "other_threshold" else THRESHOLD
    assert _seats(database, "gc_SFZ_1_0", 8, threshold=threshold) == 0  # 2 left
    assert _alerts(database) == ([], [])


def test_a_class_of_no_course_is_ignored(database):
    with database.session_scope() as s:
        _course(s)
        factories.group_class(s, id="gc_plain", capacity=5, seats_taken=5)
    with database.session_scope() as s:
        assert check_low_seats(session=s, class_id="gc_plain", threshold=THRESHOLD) == 0


def test_the_scan_reads_only_classes_still_to_come_and_forgets_the_flags_of_those_gone_by(database):
    """The scan read (and on PostgreSQL locked) every option ever made, a class long past that ended full
    included, every 5 minutes: 100,000 past options took 9 to 19 s and 344 MB a run, holding SQLite's write
    lock all along. It now reads the options of classes still to come; a flag left on a class that started or
    was cancelled is cleared in one statement."""
    with database.session_scope() as s:
        program, _ = _course(s)
        step = program.steps[0]
        for i in range(30):  # classes gone by, half of them ended full and flagged
            factories.group_class(s, id=f"gc_past_{i}", starts_in=-timedelta(days=i + 1), capacity=10,
                                  seats_taken=10 if i % 2 else 2)
            s.add(CourseStepOption(program_id=program.id, step_id=step.id, group_class_id=f"gc_past_{i}",
                                   low_seat_alerted_at=utcnow() - timedelta(days=i + 2) if i % 2 else None))
        cancelled = factories.group_class(s, id="gc_cancelled", capacity=10, seats_taken=10,
                                          status=ClassStatus.CANCELLED)
        s.add(CourseStepOption(program_id=program.id, step_id=step.id, group_class_id=cancelled.id,
                               low_seat_alerted_at=utcnow()))
        s.get(GroupClass, "gc_SFZ_1_0").seats_taken = 9  # one left: alerts
    loaded = []

    def on_load(option, _context):
        loaded.append(option.group_class_id)

    event.listen(CourseStepOption, "load", on_load)
    try:
        with database.session_scope() as s:
            assert check_low_seats(session=s, class_id=None, threshold=THRESHOLD) == 1
    finally:
        event.remove(CourseStepOption, "load", on_load)
    assert sorted(loaded) == ["gc_SFZ_1_0", "gc_SFZ_2_0"]  # the options of classes still to come, only
    with database.session_scope() as s:
        flagged = s.scalars(select(CourseStepOption.group_class_id)
                            .where(CourseStepOption.low_seat_alerted_at.is_not(None))).all()
        assert flagged == ["gc_SFZ_1_0"]
    # a cancelled class scheduled again, still full: a new crossing, alerted
    with database.session_scope() as s:
        s.get(GroupClass, "gc_cancelled").status = ClassStatus.SCHEDULED
    assert _seats(database, "gc_cancelled", 10) == 1
