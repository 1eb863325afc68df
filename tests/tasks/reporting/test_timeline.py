"""The timeline an admin reads: step labels, one row per message, a filter by kind, and a completed
student's story measured before (one row per logged move) and after (what a human reads)."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from db.enums import (
    BookingStatus,
    CreditType,
    EnrollmentStatus,
    InboxSource,
    InboxStatus,
    OutboxChannel,
    ProgressStatus,
)
from db.models import (
    Booking,
    CourseStep,
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    StudentCourseEnrollment,
    StudentCourseProgress,
    TransitionLog,
)
from tasks.admins import audit
from tasks.admins.accounts import Principal
from tasks.errors import ValidationFailed
from tasks.ledger import credits
from tasks.ledger.causes import Cause
from tasks.machines import ENROLLMENT, PROGRESS
from tasks.messaging import delivery
from tasks.reporting import timeline
from tests import factories
from tests.conftest import make_settings
from tests.tasks.bookings.bookings_support import at, attendance, booking_created
from tests.tasks.bookings.bookings_support import deliver as deliver_platform
from tests.tasks.messaging.outbox_servers import platform_receiver, smtp_sink  # noqa: F401
from tests.tasks.purchases.payments_support import checkout
from tests.tasks.purchases.payments_support import deliver as deliver_stripe


def test_rows_of_every_kind_with_step_labels(session):
    student = factories.student(session)
    program = factories.program(session)
    enrollment = factories.enrollment(session, student, program, session_id="cs_t", status=EnrollmentStatus.ACTIVE)
    enrollment.stripe_payment_intent_id = "pi_t"
    credits.issue_credits(session=session, student_id=student.id, credit_type=CreditType.PRIVATE, quantity=2,
                          cause=Cause.bundle(enrollment.id), enrollment_id=enrollment.id)
    ENROLLMENT.move(enrollment, EnrollmentStatus.SUSPENDED, session=session, cause="dispute dp_1",
                    enrollment_id=enrollment.id)
    first = session.scalars(select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == enrollment.id)
                            .order_by(StudentCourseProgress.step_id)).first()
    PROGRESS.move(first, ProgressStatus.BOOKED, session=session, cause="booking bk_t", enrollment_id=enrollment.id)
    session.add(Booking(id="bk_t", student_id=student.id, class_id="gc_1", enrollment_id=enrollment.id,
                        status=BookingStatus.ACTIVE))
    base = dict(source=InboxSource.PLATFORM, payload={}, status=InboxStatus.PROCESSED)
    session.add_all([
        InboxEvent(event_id="evt_pay", type="charge.dispute.created", subject="payment:pi_t",
                   **{**base, "source": InboxSource.STRIPE}),
        InboxEvent(event_id="pev_cancel", type="booking.cancelled", subject="booking:bk_t", **base),
        InboxEvent(event_id="pev_made", type="booking.created", subject=f"student:{student.id}",
                   **{**base, "payload": {"data": {"booking_id": "bk_t"}}}),
        InboxEvent(event_id="pev_other", type="booking.created", subject=f"student:{student.id}",
                   **{**base, "payload": {"data": {"booking_id": "bk_elsewhere"}}}),
        OutboxMessage(dedupe_key="d1", channel=OutboxChannel.PLATFORM, topic="enrollment.suspended", payload={},
                      enrollment_id=enrollment.id),
    ])
    audit.record(session=session, principal=Principal(actor="op@studio.test", role="operator"),
                 action="enrollment.revoke", target=f"enrollment:{enrollment.id}", reason="asked to leave")
    session.flush()

    rows = timeline.enrollment_timeline(session=session, enrollment_id=enrollment.id)
    seen = {(t.kind, t.what) for t in rows}
    assert ("payment", f"enrollment {enrollment.id}: active → suspended") in seen
    assert ("progress", "SFZ-1: unbooked → booked") in seen  # the step's label, not "progress 1"
    assert {("payment", "stripe charge.dispute.created (processed)"),
            ("booking", "platform booking.cancelled (processed)"),
            ("booking", "platform booking.created (processed)")} <= seen
    assert ("message", "platform enrollment.suspended: pending") in seen
    assert ("credit", "grant +2 private") in seen
    assert ("admin", "enrollment.revoke by op@studio.test") in seen
    assert not any("pev_other" in t.detail for t in rows)
    assert [t.at for t in rows] == sorted(t.at for t in rows)
    assert {t.kind for t in rows} == set(timeline.KINDS) - {"profile"}

    only = timeline.enrollment_timeline(session=session, enrollment_id=enrollment.id,
                                        kinds=frozenset({"progress", "admin"}))
    assert [t.what for t in only] == ["SFZ-1: unbooked → booked", "enrollment.revoke by op@studio.test"]
    assert timeline.enrollment_timeline(session=session, enrollment_id=999) == []

    session.add(InboxEvent(event_id="pev_profile", type="student.upserted", subject=f"student:{student.id}", **base))
    session.flush()
    on_student = timeline.student_timeline(session=session, student_id=student.id)
    assert ("profile", "platform student.upserted (processed)") in {(t.kind, t.what) for t in on_student}
    assert ("payment", f"enrollment {enrollment.id}: active → suspended") in {(t.kind, t.what) for t in on_student}
    assert all((t.ref.get("enrollment_id"), t.ref.get("course_code")) == (enrollment.id, "SFZ")
               for t in on_student if t.kind in ("progress", "credit", "message"))


def test_the_kind_filter_refuses_what_it_does_not_know():
    assert timeline.parse_kinds([]) is None
    assert timeline.parse_kinds(["", " "]) is None
    assert timeline.parse_kinds(["progress", "credit"]) == {"progress", "credit"}
    with pytest.raises(ValidationFailed, match="kind: unknown outbox"):
        timeline.parse_kinds(["progress", "outbox"])


# --------------------------------------------------------------------------- a completed student, measured


@pytest.fixture
def relay_settings(database, smtp_sink, platform_receiver):  # noqa: F811
    return make_settings(database.url, smtp_url=smtp_sink.url, platform_callback_url=platform_receiver.url,
                         admin_alert_emails=("ops@example.test",))


def _relay_until_quiet(database, settings, now):
    """Every due message, attempt by attempt as the relay makes them, until nothing is due."""
    for _ in range(50):
        with database.session_scope() as s:
            ids = delivery.due_ids(session=s, settings=settings, now=now)
        if not ids:
            return
        for message_id in ids:
            with database.session_scope() as s:
                job = delivery.claim(session=s, message_id=message_id, settings=settings, now=now)
            if job is None:
                continue
            outcome = delivery.transmit(job, settings=settings, timeout=3)
            with database.session_scope() as s:
                delivery.record(session=s, job=job, outcome=outcome, now=now)
        now += timedelta(hours=2)  # past every backoff
    raise AssertionError("the relay never went quiet")


def test_a_completed_students_timeline_is_what_a_human_reads(database, relay_settings, platform_receiver):  # noqa: F811
    with database.session_scope() as s:
        factories.program(s, steps=3)
        for position in (1, 2, 3):
            factories.group_class(s, id=f"gc_SFZ_{position}_0", title=f"Class {position}",
                                  starts_in=timedelta(days=position))
    deliver_stripe(database, checkout(cs="cs_done", pi="pi_done", student="stu_1"))
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        enrollment_id = enrollment.id
        step_ids = list(s.scalars(select(CourseStep.id).where(CourseStep.program_id == enrollment.program_id)
                                  .order_by(CourseStep.position)))
    platform_receiver.fail_next = 4  # a flaky platform: some messages need a second attempt
    for position in (1, 2, 3):
        deliver_platform(database, booking_created(f"bk_{position}", f"gc_SFZ_{position}_0",
                                                   step_id=step_ids[position - 1], when=at(position)))
        deliver_platform(database, attendance(f"bk_{position}", "attended", when=at(1000 * position)))
    _relay_until_quiet(database, relay_settings, at(10_000) + timedelta(days=30))

    with database.session_scope() as s:
        assert s.get(StudentCourseEnrollment, enrollment_id).status is EnrollmentStatus.COMPLETED
        # before: every logged move, event, message and ledger entry a row of its own
        before = (s.scalar(select(func.count()).select_from(TransitionLog)
                           .where(TransitionLog.enrollment_id == enrollment_id))
                  + s.scalar(select(func.count()).select_from(InboxEvent))
                  + s.scalar(select(func.count()).select_from(CreditLedgerEntry)))
        messages = s.scalar(select(func.count()).select_from(OutboxMessage)
                            .where(OutboxMessage.enrollment_id == enrollment_id))
        rows = timeline.student_timeline(session=s, student_id="stu_1")
        enrollment_rows = timeline.enrollment_timeline(session=s, enrollment_id=enrollment_id)
    after = len(rows)
    rows_before = before + messages  # what a row per move, event, message and ledger entry made
    print(f"\ncompleted student's timeline: {rows_before} rows before, {after} after")
    assert rows_before >= 60 and after * 3 <= rows_before  # 66 → 21 today
    assert len({t.ref["outbox_id"] for t in rows if t.kind == "message"}) == messages  # one row per message
    assert sum(t.kind == "message" for t in rows) == messages
    retried = [t for t in rows if t.kind == "message" and t.ref["attempts"] > 1]
    assert retried and all(t.what.endswith(": sent") for t in retried)
    labels = [t.what for t in rows if t.kind == "progress"]
    assert "SFZ-3: booked → completed" in labels and not any("progress" in w for w in labels)
    assert len(enrollment_rows) == after  # the student has one enrollment and nothing else


def test_a_long_history_keeps_its_newest_rows_not_its_oldest(database):
    """Each source read its oldest rows up to the limit: with more credit entries than that, the newest, the
    ones an admin opens the page for, were the ones left out."""
    from db.enums import CreditType
    from tasks.ledger import credits
    from tasks.reporting import timeline
    from tests import factories

    with database.session_scope() as s:
        factories.student(s)
        for n in range(8):
            credits.issue_credits(session=s, student_id="stu_1", credit_type=CreditType.GROUP, quantity=1,
                                  cause=f"promo-{n}")
    with database.session_scope() as s:
        rows = timeline.student_timeline(session=s, student_id="stu_1", kinds=frozenset({"credit"}), limit=5)
        assert [row.detail for row in rows] == [f"1 group credit grant: promo-{n}" for n in range(3, 8)]
