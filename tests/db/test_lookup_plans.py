"""Look-ups that run on every refund, dispute, booking, checkout-status poll, read-API call or buyer known by
e-mail are answered by an index, not by reading the whole table (docs/performance.md has what the scans cost
over a million enrollments)."""
from __future__ import annotations

from datetime import timedelta

import pytest

from db.enums import PurchaseStatus
from db.models import PackagePurchase
from db.types import utcnow
from tasks.bookings import services as bookings
from tasks.enrollments import services as enrollments
from tasks.ledger import credits
from tasks.purchases import fulfilment, payments
from tests import factories
from tests.plans import plans_of

pytestmark = pytest.mark.postgres


def _indexed(plans: list[str], index: str) -> None:
    """No statement reads the table whole, and `index` answers at least one of them."""
    assert plans, "the code ran no statement naming the table"
    for plan in plans:
        assert "Seq Scan" not in plan, plan
    assert any(f"using {index}" in plan or f"Bitmap Index Scan on {index}" in plan for plan in plans), "\n\n".join(plans)


def test_a_buyer_known_only_by_email_is_found_through_the_lower_email_index(pg_database):
    with pg_database.session_scope() as s:
        factories.student(s, id="stu_mail", email="Buyer@Example.test")
        found = []
        plans = plans_of(pg_database, s, lambda: found.append(fulfilment.buyer_id(
            s, {"id": "cs_mail", "customer_details": {"email": " buyer@example.TEST"}})), naming="FROM student WHERE")
        assert found == ["stu_mail"]
        _indexed(plans, "ix_student_email_lower")


def test_settling_an_enrollment_reads_its_refunds_disputes_and_grants_through_indexes(pg_database):
    with pg_database.session_scope() as s:
        enrollment = factories.enrollment(s, factories.student(s), factories.program(s, code="IX", steps=1))
        work = lambda: payments.settle_enrollment(session=s, enrollment=enrollment, cause="test")  # noqa: E731
        _indexed(plans_of(pg_database, s, work, naming="FROM payment_refund"), "ix_payment_refund_enrollment_id")
        _indexed(plans_of(pg_database, s, work, naming="FROM payment_dispute"), "ix_payment_dispute_enrollment_id")
        _indexed(plans_of(pg_database, s, work, naming="FROM credit_ledger_entry"),
                 "ix_credit_ledger_entry_enrollment_id")


def test_settling_a_package_purchase_reads_its_refunds_and_grants_through_indexes(pg_database):
    with pg_database.session_scope() as s:
        purchase = PackagePurchase(id=1, amount_total=5000, amount_refunded=0, status=PurchaseStatus.PAID)
        work = lambda: payments.settle_package(session=s, purchase=purchase, cause="test")  # noqa: E731
        _indexed(plans_of(pg_database, s, work, naming="FROM payment_refund"),
                 "ix_payment_refund_package_purchase_id")
        _indexed(plans_of(pg_database, s, work, naming="FROM credit_ledger_entry"),
                 "ix_credit_ledger_entry_package_purchase_id")
        assert credits.lots(session=s, package_purchase_id=1) == []


def test_an_enrollments_bookings_are_read_through_an_index(pg_database):
    """Whether a newer accepted booking overtook this one (every booking of a step), and the active bookings a
    revocation cancels."""
    with pg_database.session_scope() as s:
        program = factories.program(s, code="IX", steps=1)
        enrollment = factories.enrollment(s, factories.student(s), program)
        enrollment.activated_at = utcnow()  # the platform knows it: its revocation names the active bookings
        step = program.steps[0]
        overtaken = []
        _indexed(plans_of(pg_database, s, lambda: overtaken.append(bookings._overtaken(
            s, enrollment, step, utcnow() - timedelta(days=1))), naming="FROM booking"), "ix_booking_enrollment_step")
        assert overtaken == [False]
        _indexed(plans_of(pg_database, s, lambda: enrollments.revoke(
            session=s, enrollment=enrollment, cause="test", reason="refunded"), naming="FROM booking"),
            "ix_booking_enrollment_step")


def test_the_relay_finds_each_channels_due_rows_through_an_index(pg_database):
    from tasks.messaging import delivery
    from tasks.messaging.outbox import add_mail, add_platform_event
    from tests.conftest import make_settings

    settings = make_settings(pg_database.url, smtp_url="smtp://127.0.0.1:1", platform_callback_url="http://127.0.0.1:1/x",
                             admin_alert_emails=("ops@example.test",))
    with pg_database.session_scope() as s:
        add_mail(session=s, template="step_reminder", recipient="a@example.test", context={}, dedupe_key="plan:m")
        add_platform_event(session=s, type="enrollment.created", data={}, dedupe_key="plan:e")
        plans = plans_of(pg_database, s, lambda: delivery.claim_due(session=s, settings=settings),
                         naming="WITH due_platform")
        _indexed(plans, "ix_outbox_message_platform_pending")
        _indexed(plans, "ix_outbox_message_status_next")


def test_retention_takes_each_batch_through_the_indexes_of_what_it_has_left_to_do(pg_database):
    """The hourly job reads its batch's own rows, not every settled event, ended mail and delivery move kept."""
    from tasks.lifecycle import retention

    with pg_database.session_scope() as s:
        work = lambda: retention.prune(session=s, retention_days=400)  # noqa: E731
        _indexed(plans_of(pg_database, s, work, naming="FROM inbox_event WHERE"), "ix_inbox_event_payload_to_prune")
        _indexed(plans_of(pg_database, s, work, naming="FROM outbox_message WHERE outbox_message.channel"),
                 "ix_outbox_message_mail_to_prune")
        _indexed(plans_of(pg_database, s, work, naming="FROM transition_log WHERE"), "ix_transition_log_delivery_at")


def test_an_events_page_finds_its_moves_through_the_cause_index(pg_database):
    """GET /admin/ui/events/<id>: the moves logged under the event's cause, not a read of the whole log."""
    from db.enums import InboxStatus
    from db.models import InboxEvent
    from tasks.reporting import timeline

    with pg_database.session_scope() as s:
        event = InboxEvent(source="platform", event_id="pev_ix", type="booking.created",
                           payload={"data": {"booking_id": "bk_ix"}}, status=InboxStatus.PROCESSED)
        s.add(event)
        s.flush()
        s.expire(event)
        work = lambda: timeline.event_timeline(session=s, inbox_id=event.id)  # noqa: E731
        _indexed(plans_of(pg_database, s, work, naming="FROM transition_log WHERE"), "ix_transition_log_cause")


@pytest.mark.parametrize("moved", ["gc_1", "gc_2"], ids=["the class reminded about", "another class listed"])
def test_a_class_move_finds_its_reminders_still_to_send_through_their_own_index(pg_database, moved):
    """A `class.upserted` moving a class ends the step reminders still to send that list it (the class a reminder
    is about is listed first): found through the GIN index of the pending reminders' listed classes, not by
    reading every pending mail (after an SMTP outage, the whole backlog: 3,000 here, of other classes)."""
    import sqlalchemy as sa

    from db.models import OutboxMessage
    from tasks.enrollments import reminders
    from tasks.messaging.outbox import add_mail

    at = utcnow().isoformat()

    def listing(main, other):
        return {"class_id": main, "starts_at": at, "reminder_id": 1,
                "options": [{"class_id": main, "starts_at": at}, {"class_id": other, "starts_at": at}]}

    with pg_database.session_scope() as s:
        add_mail(session=s, template="step_reminder", recipient="a@example.test", dedupe_key="plan:main",
                 context=listing("gc_1", "gc_2"))
        s.execute(sa.insert(OutboxMessage), [
            {"public_id": f"p{n:031d}", "dedupe_key": f"backlog:{n}", "channel": "mail", "topic": "step_reminder",
             "recipient": "b@example.test", "status": "pending", "attempts": 0, "created_at": utcnow(),
             "next_attempt_at": utcnow(), "payload": {"template": "step_reminder",
                                                      "context": listing(f"gc_x{n}", f"gc_y{n}")}}
            for n in range(3000)])
        s.execute(sa.text("ANALYZE outbox_message"))
        ended = []
        work = lambda: ended.append(reminders.class_changed(session=s, class_id=moved, starts_at=utcnow()))  # noqa: E731
        _indexed(plans_of(pg_database, s, work, naming="FROM outbox_message WHERE", bitmap=True),
                 "ix_outbox_message_reminder_options")
        assert ended == [1]
