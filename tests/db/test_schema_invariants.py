"""Each database invariant, proved by trying to break it (on SQLite and PostgreSQL)."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from db.enums import BookingStatus, CreditType, InboxSource, LedgerEntryType
from db.models import (
    Booking,
    CourseBundleComponent,
    CourseStepOption,
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from db.types import utcnow
from tests import factories


def _refused(database, fn):
    with pytest.raises(IntegrityError):
        with database.session_scope() as s:
            fn(s)


def _setup(database):
    with database.session_scope() as s:
        stu = factories.student(s)
        prog = factories.program(s)
        enr = factories.enrollment(s, stu, prog)
        return stu.id, prog.id, enr.id, [st.id for st in prog.steps]


def test_inbox_event_is_unique_per_source_and_event_id(database):
    with database.session_scope() as s:
        s.add(InboxEvent(source=InboxSource.STRIPE, event_id="evt_1", type="x", payload={}))
    _refused(database, lambda s: s.add(InboxEvent(source=InboxSource.STRIPE, event_id="evt_1", type="y", payload={})))
    # the same id from the other source is a different event
    with database.session_scope() as s:
        s.add(InboxEvent(source=InboxSource.PLATFORM, event_id="evt_1", type="x", payload={}))
        assert s.scalar(text("SELECT count(*) FROM inbox_event")) == 2


def test_one_progress_row_per_enrollment_and_step(database):
    _, _, enr_id, steps = _setup(database)
    _refused(database, lambda s: s.add(StudentCourseProgress(enrollment_id=enr_id, step_id=steps[0])))


def test_at_most_one_active_booking_per_enrollment_step(database):
    stu_id, _, enr_id, steps = _setup(database)

    def booking(id, status=BookingStatus.ACTIVE, step=steps[0]):
        return Booking(id=id, student_id=stu_id, class_id="gc_x", course_step_id=step, enrollment_id=enr_id,
                       status=status, booked_at=utcnow())

    with database.session_scope() as s:
        s.add(booking("bk_1"))
    _refused(database, lambda s: s.add(booking("bk_2")))
    with database.session_scope() as s:
        # a cancelled one beside it, and another step at once, are both fine
        s.add(booking("bk_3", status=BookingStatus.CANCELLED))
        s.add(booking("bk_4", step=steps[1]))
    with database.session_scope() as s:
        s.get(Booking, "bk_1").status = BookingStatus.CANCELLED
    with database.session_scope() as s:
        s.add(booking("bk_5"))  # rebookable once the first is no longer active


def test_status_check_constraints_refuse_unknown_values(database):
    _, _, enr_id, _ = _setup(database)
    _refused(database, lambda s: s.execute(
        text("UPDATE student_course_enrollment SET status = 'teleported' WHERE id = :id"), {"id": enr_id}))
    _refused(database, lambda s: s.execute(
        text("UPDATE student_course_progress SET status = 'maybe' WHERE enrollment_id = :id"), {"id": enr_id}))
    _refused(database, lambda s: s.execute(
        text("INSERT INTO inbox_event (source, event_id, type, payload, status, attempts, received_at) "
             "VALUES ('carrier-pigeon', 'e', 't', '{}', 'pending', 0, '2026-01-01')")))


def test_foreign_keys_are_enforced(database):
    _refused(database, lambda s: s.add(StudentCourseProgress(enrollment_id=999_999, step_id=999_999)))
    _refused(database, lambda s: s.add(StudentCourseEnrollment(
        student_id="nobody", program_id=999_999, status="active", stripe_checkout_session_id="cs_x")))


def test_one_enrollment_per_checkout_session(database):
    stu_id, prog_id, _, _ = _setup(database)
    _refused(database, lambda s: s.add(StudentCourseEnrollment(
        student_id=stu_id, program_id=prog_id, status="active", stripe_checkout_session_id="cs_test_1")))


def test_ledger_cause_counts_once_and_signs_are_checked(database):
    stu_id, _, _, _ = _setup(database)
    with database.session_scope() as s:
        s.add(CreditLedgerEntry(idempotency_key="grant:pkg:1", student_id=stu_id, credit_type=CreditType.GROUP,
                                entry_type=LedgerEntryType.GRANT, quantity=5, cause="pkg:1"))
    _refused(database, lambda s: s.add(CreditLedgerEntry(
        idempotency_key="grant:pkg:1", student_id=stu_id, credit_type=CreditType.GROUP,
        entry_type=LedgerEntryType.GRANT, quantity=5, cause="pkg:1")))
    _refused(database, lambda s: s.add(CreditLedgerEntry(  # a grant cannot be negative
        idempotency_key="grant:pkg:2", student_id=stu_id, credit_type=CreditType.GROUP,
        entry_type=LedgerEntryType.GRANT, quantity=-1, cause="pkg:2")))
    _refused(database, lambda s: s.add(CreditLedgerEntry(  # a consumption must draw on a grant
        idempotency_key="consume:x", student_id=stu_id, credit_type=CreditType.GROUP,
        entry_type=LedgerEntryType.CONSUME, quantity=-1, cause="booking:x")))


def test_bundle_quantity_must_be_positive_and_class_serves_one_step_per_course(database):
    _, prog_id, _, steps = _setup(database)
    _refused(database, lambda s: s.add(CourseBundleComponent(program_id=prog_id, kind="private_credit", quantity=0)))
    _refused(database, lambda s: s.add(CourseStepOption(program_id=prog_id, step_id=steps[1],
                                                        group_class_id="gc_SFZ_1_0")))


def test_outbox_dedupe_key_is_unique(database):
    with database.session_scope() as s:
        s.add(OutboxMessage(dedupe_key="k", channel="mail", topic="t", payload={}))
    _refused(database, lambda s: s.add(OutboxMessage(dedupe_key="k", channel="mail", topic="t", payload={})))


def test_a_unique_conflict_is_told_apart_from_a_broken_foreign_key(database):
    import pytest
    from sqlalchemy.exc import IntegrityError

    from db.database import is_unique_violation
    from db.models import Student

    with database.session_scope() as s:
        factories.student(s, id="stu_u")
    with pytest.raises(IntegrityError) as unique:
        with database.session_scope() as s:
            s.add(Student(id="stu_u", email="again@example.test"))
    with pytest.raises(IntegrityError) as foreign:
        with database.session_scope() as s:
            s.add(StudentCourseProgress(enrollment_id=999_999, step_id=999_999))
    assert is_unique_violation(unique.value) is True
    assert is_unique_violation(foreign.value) is False
