"""Checkout fulfilment through the inbox runner, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import timedelta

import pytest

from sqlalchemy import func, select

from db.enums import BundleKind, CreditType, InboxStatus, ProgramStatus
from db.models import (
    CourseStep,
    CreditLedgerEntry,
    CreditPackage,
    OutboxMessage,
    PackagePurchase,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
    TransitionLog,
)
from db.types import utcnow
from tests import inbox_api as inbox
from tasks.ledger import credits
from tasks.catalog import services as catalog
from tasks.messaging import mail
from tests import factories
from tests.tasks.purchases.payments_support import COURSE_PRICE, checkout, deliver, inbox_row, run, state, store


def _catalog(database, **kw):
    with database.session_scope() as s:
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2), (BundleKind.GROUP_CREDIT, 1)), **kw)
        return program.id


def _package(database, code="P10", quantity=10, credit_type=CreditType.GROUP, validity_days=None, price_id=None):
    with database.session_scope() as s:
        s.add(CreditPackage(code=code, title=f"{code} pack", price_amount=9000, credit_type=credit_type,
                            quantity=quantity, validity_days=validity_days, stripe_price_id=price_id))


def _count(database, model, *where) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def test_paid_checkout_becomes_one_active_enrollment_with_steps_and_bundle(database):
    program_id = _catalog(database)
    event = checkout(cs="cs_a", pi="pi_a")
    result = deliver(database, event)
    assert result.outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert enrollment.status.value == "active" and enrollment.program_id == program_id
        assert enrollment.stripe_checkout_session_id == "cs_a" and enrollment.stripe_payment_intent_id == "pi_a"
        assert enrollment.amount_total == 12000 and enrollment.currency == "usd"
        assert enrollment.activated_at is not None
        meta = enrollment.fulfilment_metadata
        assert meta["event_id"] == event["id"] and meta["metadata"]["course_code"] == "SFZ"
        assert sorted((b["kind"], b["quantity"]) for b in meta["bundle"]) == [("group_credit", 1),
                                                                            ("private_credit", 2)]
        progress = s.scalars(select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == enrollment.id)
                             ).all()
        steps = s.scalars(select(CourseStep.id).where(CourseStep.program_id == program_id)).all()
        assert sorted(p.step_id for p in progress) == sorted(steps) and len(steps) == 3
        assert {p.status.value for p in progress} == {"unbooked"}
        assert credits.balances(session=s, student_id="stu_1") == {"group": 1, "private": 2}
        # the buyer was unknown: created from the session
        student = s.get(Student, "stu_1")
        assert student.email == "buyer@example.test"
        topics = sorted((m.channel.value, m.topic) for m in s.scalars(select(OutboxMessage)))
        assert topics == [("mail", "enrollment_welcome"), ("platform", "enrollment.created")]
        mail = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome"))
        assert mail.recipient == "buyer@example.test"
        ctx = mail.payload["context"]
        assert ctx["course_code"] == "SFZ" and [st["label"] for st in ctx["steps"]] == ["SFZ-1", "SFZ-2", "SFZ-3"]
        assert {b["kind"]: b["quantity"] for b in ctx["bundle"]} == {"private_credit": 2, "group_credit": 1}
        created = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment.created"))
        assert created.payload["data"]["enrollment_id"] == enrollment.id
        assert created.payload["data"]["course_code"] == "SFZ"
        assert s.scalar(select(TransitionLog).where(TransitionLog.entity == "enrollment")).to_status == "active"


def test_the_same_event_twice_and_a_second_event_for_the_session_change_nothing(database):
    _catalog(database)
    event = checkout(cs="cs_a", pi="pi_a")
    first = store(database, event)
    assert store(database, event) == first  # a redelivery is the same inbox row
    run(database, first)
    assert run(database, first).outcome is inbox.Outcome.SKIPPED
    before = state(database)
    # another event about the same session (e.g. the reconciliation job's synthetic one)
    again = checkout(cs="cs_a", pi="pi_a")
    assert deliver(database, again).outcome is inbox.Outcome.PROCESSED
    assert state(database) == before
    assert _count(database, StudentCourseEnrollment) == 1
    assert _count(database, StudentCourseProgress) == 3
    assert _count(database, CreditLedgerEntry) == 2
    assert _count(database, OutboxMessage) == 2


def test_package_and_course_by_one_student_give_one_combined_balance(database):
    _catalog(database)
    _package(database, quantity=10, credit_type=CreditType.GROUP, validity_days=90)
    deliver(database, checkout(cs="cs_course", pi="pi_course"))
    deliver(database, checkout(cs="cs_pack", pi="pi_pack", package="P10", amount=9000))
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 11, "private": 2}
        purchase = s.scalar(select(PackagePurchase))
        assert purchase.status.value == "paid" and purchase.amount_total == 9000
        grant = s.scalar(select(CreditLedgerEntry).where(CreditLedgerEntry.package_purchase_id == purchase.id))
        assert grant.quantity == 10 and grant.expires_at is not None
        assert timedelta(days=89) < grant.expires_at - utcnow() <= timedelta(days=90)
    deliver(database, checkout(cs="cs_pack", pi="pi_pack", package="P10", amount=9000))  # a second event
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 11, "private": 2}


def test_unpaid_session_is_pending_until_the_async_payment_succeeds(database):
    _catalog(database)
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="unpaid"))
    assert state(database)["enrollments"] == [
        {"session": "cs_async", "status": "pending", "refunded": 0, "steps": [], "lots": []}]
    assert _count(database, OutboxMessage) == 0
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="paid",
                               type_="checkout.session.async_payment_succeeded"))
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "active" and enrollment["steps"] == ["unbooked"] * 3
    assert enrollment["lots"] == [("group", 1, 1), ("private", 2, 2)]


def test_async_payment_failed_marks_the_enrollment_failed(database):
    _catalog(database)
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="unpaid"))
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="unpaid",
                               type_="checkout.session.async_payment_failed"))
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "failed" and enrollment["steps"] == [] and enrollment["lots"] == []


def test_wrong_order_async_success_before_completed_stays_active(database):
    _catalog(database)
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="paid",
                               type_="checkout.session.async_payment_succeeded"))
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="unpaid"))  # the late `completed`
    deliver(database, checkout(cs="cs_async", pi="pi_async", payment_status="unpaid",
                               type_="checkout.session.async_payment_failed"))  # cannot undo a settled payment
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "active" and enrollment["lots"] == [("group", 1, 1), ("private", 2, 2)]


def test_pending_package_is_credited_only_when_paid(database):
    _package(database)
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000, payment_status="unpaid"))
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 0, "private": 0}
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000,
                               type_="checkout.session.async_payment_succeeded"))
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 10, "private": 0}


def test_a_pending_package_is_credited_with_what_it_sold_after_the_package_changed(database):
    """Paid for 10 credits valid 180 days, the purchase was granted the package as edited while its payment
    settled: 3 credits valid 1 day. It now records what it sold, as an enrollment records its bundle."""
    from datetime import timedelta

    from db.models import PackagePurchase
    from db.types import utcnow

    _package(database, validity_days=180)
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000, payment_status="unpaid"))
    with database.session_scope() as s:
        assert s.scalar(select(PackagePurchase.sold)) == {"credit_type": "group", "quantity": 10, "validity_days": 180}
        package = s.scalar(select(CreditPackage))
        package.quantity, package.validity_days, package.credit_type = 3, 1, CreditType.PRIVATE
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000,
                               type_="checkout.session.async_payment_succeeded"))
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 10, "private": 0}
        grant = s.scalar(select(CreditLedgerEntry))
        assert utcnow() + timedelta(days=179) < grant.expires_at <= utcnow() + timedelta(days=180)
    # a new purchase sells the package as it is now
    deliver(database, checkout(cs="cs_q", pi="pi_q", package="P10", amount=9000))
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 10, "private": 3}


def test_unknown_course_fails_visibly_and_a_replay_after_the_fix_fulfils(database):
    event = checkout(cs="cs_x", pi="pi_x", course="NEW")
    result = deliver(database, event)
    assert result.outcome is inbox.Outcome.FAILED and "unknown course 'NEW'" in result.error
    row = inbox_row(database, event)
    assert row.status == InboxStatus.FAILED and "NEW" in row.last_error
    assert _count(database, StudentCourseEnrollment) == 0 and _count(database, Student) == 0
    _catalog(database, code="NEW")  # the admin creates the course
    with database.session_scope() as s:
        inbox.replay(session=s, inbox_id=row.id)
    assert run(database, row.id).outcome is inbox.Outcome.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "active"


def _sold_as(kind: str, code: str, row_id: int) -> dict:
    """A session's metadata as `POST /v1/checkout-sessions` writes it: the code and the id of the row sold."""
    return {"kind": kind, f"{kind}_code": code, f"coursepipe_{kind}_id": str(row_id), "student_id": "stu_1"}


@pytest.mark.parametrize("marked", [False, True], ids=["unmarked", "marked as a purchase"])
def test_a_course_deleted_and_made_again_under_its_code_leaves_an_open_checkout_buying_the_course_it_sold(
        database, marked):
    """SFZ sold (a checkout opened naming it), SFZ deleted, a new SFZ made with other steps and bundle, then the old
    checkout paid: before, the code chose the live row and the buyer was enrolled in the new course."""
    sold_id = _catalog(database)
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
        new_id = factories.program(s, steps=2, bundle=((BundleKind.GROUP_CREDIT, 5),)).id
    paid = checkout(cs="cs_old", pi="pi_old", metadata=_sold_as("course", "SFZ", sold_id))
    assert deliver(database, paid, marked=marked).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert enrollment.program_id == sold_id != new_id
        steps = s.scalars(select(CourseStep.program_id).join(StudentCourseProgress,
                                                             StudentCourseProgress.step_id == CourseStep.id)).all()
        assert steps == [sold_id] * 3
        assert credits.balances(session=s, student_id="stu_1") == {"group": 1, "private": 2}  # the bundle sold
    # the studio is told once: the buyer holds a course whose steps cannot be booked
    deliver(database, checkout(cs="cs_old", pi="pi_old", metadata=_sold_as("course", "SFZ", sold_id),
                               event_id="evt_again"), marked=marked)
    # a session made elsewhere, naming the code only, buys the course that has the code now (as before)
    deliver(database, checkout(cs="cs_new", pi="pi_new", student="stu_2"), marked=marked)
    with database.session_scope() as s:
        assert s.scalar(select(StudentCourseEnrollment.program_id).where(
            StudentCourseEnrollment.student_id == "stu_2")) == new_id
        alerts = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "deleted_course_sold_alert")).all()
        assert [(m.recipient, m.enrollment_id) for m in alerts] == [("@admins", enrollment.id)]
        context = alerts[0].payload["context"]
        assert (context["course_code"], context["student_id"], context["checkout_session_id"], context["amount"]) \
            == ("SFZ", "stu_1", "cs_old", COURSE_PRICE)
    rendered = mail.render("deleted_course_sold_alert", context)
    assert "Paid for deleted course SFZ" in rendered.subject and f"/admin/enrollments/{enrollment.id}/refund" \
        in rendered.text


def _deleted_course_alerts(database) -> list[int]:
    with database.session_scope() as s:
        return s.scalars(select(OutboxMessage.enrollment_id).where(
            OutboxMessage.topic == "deleted_course_sold_alert")).all()


def test_a_sale_made_while_the_course_was_live_is_no_deleted_course_sale_when_a_copy_comes_after_the_delete(
        database):
    """Paid and fulfilled while SFZ was live, SFZ deleted, then a copy of the checkout (the success page's return,
    or Stripe's redelivery under another id): the studio was told a deleted course had been sold."""
    sold_id = _catalog(database)
    paid = checkout(cs="cs_1", pi="pi_1", metadata=_sold_as("course", "SFZ", sold_id), event_id="evt_1")
    assert deliver(database, paid).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    assert deliver(database, paid).outcome is inbox.Outcome.SKIPPED  # the same event again: stored once
    assert deliver(database, {**paid, "id": "return:cs_1"}).outcome is inbox.Outcome.PROCESSED  # a copy
    assert _deleted_course_alerts(database) == []


def test_a_checkout_paid_late_for_a_course_deleted_while_it_was_unpaid_alerts_once(database):
    """Unpaid (async payment), SFZ deleted and made again, then the payment succeeds, twice: the buyer gets the
    course sold, and the studio is told once."""
    sold_id = _catalog(database)
    metadata = _sold_as("course", "SFZ", sold_id)
    deliver(database, checkout(cs="cs_1", pi="pi_1", metadata=metadata, payment_status="unpaid", event_id="evt_1"))
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
        factories.program(s, steps=2)
    for event_id in ("evt_2", "evt_2b"):
        assert deliver(database, checkout(cs="cs_1", pi="pi_1", metadata=metadata, event_id=event_id,
                                          type_="checkout.session.async_payment_succeeded")).outcome \
            is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert (enrollment.program_id, enrollment.status.value) == (sold_id, "active")
    assert _deleted_course_alerts(database) == [enrollment.id]


def test_a_package_deleted_and_made_again_under_its_code_leaves_an_open_checkout_buying_the_package_it_sold(
        database):
    _package(database, quantity=10)
    with database.session_scope() as s:
        sold_id = catalog.get_package(s, "P10").id
        catalog.delete_package(session=s, code="P10")
    _package(database, quantity=3, credit_type=CreditType.PRIVATE)
    paid = checkout(cs="cs_old", pi="pi_old", amount=9000, metadata=_sold_as("package", "P10", sold_id))
    assert deliver(database, paid).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        assert s.scalar(select(PackagePurchase.package_id)) == sold_id
        assert credits.balances(session=s, student_id="stu_1") == {"group": 10, "private": 0}  # what it sold


@pytest.mark.parametrize("kind", ["course", "package"])
def test_a_checkout_whose_id_is_not_a_row_of_its_code_is_matched_by_its_code(database, kind):
    """An id naming a row of another code, no row, or not an id at all is not coursepipe's own (a session made
    elsewhere may carry such a key): the code decides, as for a session without it, and the payment is never
    refused for it."""
    if kind == "course":
        code, sold_id = "SFZ", _catalog(database)
        other_id = _catalog(database, code="OTHER")
    else:
        code = "P10"
        _package(database, code="P10")
        _package(database, code="P20")
        with database.session_scope() as s:
            sold_id, other_id = catalog.get_package(s, "P10").id, catalog.get_package(s, "P20").id
    for n, row_id in enumerate([str(other_id), str(other_id + 1000), "1 OR 1=1", 7, "0x1"]):
        metadata = {"kind": kind, f"{kind}_code": code, f"coursepipe_{kind}_id": row_id, "student_id": f"stu_{n}"}
        event = checkout(cs=f"cs_{n}", pi=f"pi_{n}", student=f"stu_{n}", metadata=metadata,
                         amount=9000 if kind == "package" else COURSE_PRICE)
        assert deliver(database, event).outcome is inbox.Outcome.PROCESSED, row_id
    with database.session_scope() as s:
        if kind == "course":
            assert s.scalars(select(StudentCourseEnrollment.program_id)).all() == [sold_id] * 5
        else:
            assert s.scalars(select(PackagePurchase.package_id)).all() == [sold_id] * 5


def test_checkout_without_student_id_fails_until_the_student_is_known(database):
    _catalog(database)
    event = checkout(cs="cs_anon", pi="pi_anon", student=None, email="Who@Example.test")
    result = deliver(database, event)
    assert result.outcome is inbox.Outcome.FAILED and "client_reference_id" in result.error
    with database.session_scope() as s:  # the platform tells us who that is (student.upserted)
        factories.student(s, id="stu_known", email="who@example.test")
    row = inbox_row(database, event)
    with database.session_scope() as s:
        inbox.replay(session=s, inbox_id=row.id)
    assert run(database, row.id).outcome is inbox.Outcome.PROCESSED
    assert state(database, "stu_known")["enrollments"][0]["status"] == "active"


def test_an_unpublished_course_is_still_fulfilled_when_paid(database):
    _catalog(database, status=ProgramStatus.DRAFT)
    deliver(database, checkout(cs="cs_u", pi="pi_u"))
    enrollment = state(database)["enrollments"][0]
    assert enrollment["status"] == "active" and len(enrollment["steps"]) == 3


def test_a_known_student_is_kept_as_the_platform_described_them(database):
    _catalog(database)
    with database.session_scope() as s:
        factories.student(s, id="stu_1", email="real@example.test", name="Real Name")
    deliver(database, checkout(cs="cs_k", pi="pi_k", email="other@example.test"))
    with database.session_scope() as s:
        student = s.get(Student, "stu_1")
        assert (student.email, student.name) == ("real@example.test", "Real Name")
        mail = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome"))
        assert mail.recipient == "real@example.test" and mail.payload["context"]["student_name"] == "Real Name"


def test_subscription_mode_sessions_are_ignored(database):
    _catalog(database)
    event = checkout(cs="cs_sub", pi=None)
    event["data"]["object"]["mode"] = "subscription"
    assert deliver(database, event).outcome is inbox.Outcome.IGNORED
    assert _count(database, StudentCourseEnrollment) == 0


def test_the_welcome_and_dispute_mails_render_from_the_context_written(database):
    from tasks.messaging import mail
    from tests.tasks.purchases.payments_support import dispute_created

    _catalog(database)
    deliver(database, checkout(cs="cs_m", pi="pi_m"))
    deliver(database, dispute_created(pi="pi_m"))
    with database.session_scope() as s:
        messages = {m.topic: m for m in s.scalars(select(OutboxMessage).where(OutboxMessage.channel == "mail"))}
    welcome = mail.render("enrollment_welcome", messages["enrollment_welcome"].payload["context"])
    assert "SFZ course" in welcome.subject and "SFZ-1" in welcome.text and "2 x private" in welcome.text.lower()
    alert = mail.render("dispute_alert", messages["dispute_alert"].payload["context"])
    assert "dp_1" in alert.subject and "SFZ" in alert.text and "stu_1" in alert.text


def test_async_success_twice_fulfils_once(database):
    _catalog(database)
    deliver(database, checkout(cs="cs_as", pi="pi_as", payment_status="unpaid"))
    success = checkout(cs="cs_as", pi="pi_as", type_="checkout.session.async_payment_succeeded")
    first = store(database, success)
    assert store(database, success) == first  # a redelivery is the same inbox row
    assert run(database, first).outcome is inbox.Outcome.PROCESSED
    assert run(database, first).outcome is inbox.Outcome.SKIPPED
    before = state(database)
    again = checkout(cs="cs_as", pi="pi_as", type_="checkout.session.async_payment_succeeded")  # a new event id
    assert deliver(database, again).outcome is inbox.Outcome.PROCESSED
    assert state(database) == before
    assert before["enrollments"][0]["status"] == "active"
    assert _count(database, CreditLedgerEntry) == 2 and _count(database, OutboxMessage) == 2


def test_async_failure_twice_and_before_its_completed_leaves_one_failed_purchase(database):
    _catalog(database)
    failed = checkout(cs="cs_af", pi="pi_af", payment_status="unpaid", type_="checkout.session.async_payment_failed")
    # wrong order: the failure arrives before the unpaid `completed`
    assert deliver(database, failed).outcome is inbox.Outcome.PROCESSED
    assert deliver(database, checkout(cs="cs_af", pi="pi_af", payment_status="unpaid")).outcome \
        is inbox.Outcome.PROCESSED
    # twice: the same event again, and a copy under a new event id
    assert run(database, store(database, failed)).outcome is inbox.Outcome.SKIPPED
    deliver(database, checkout(cs="cs_af", pi="pi_af", payment_status="unpaid",
                               type_="checkout.session.async_payment_failed"))
    [enrollment] = state(database)["enrollments"]
    assert enrollment["status"] == "failed" and enrollment["lots"] == [] and enrollment["steps"] == []
    assert _count(database, StudentCourseEnrollment) == 1 and _count(database, OutboxMessage) == 0


MALFORMED_CHECKOUTS = [
    ("metadata", "course=SFZ", "metadata is not an object"),
    ("customer_details", ["buyer@example.test"], "customer_details is not an object"),
    ("client_reference_id", {"id": "stu_1"}, "client_reference_id is not a string"),
    ("payment_intent", 42, "payment_intent is not a string"),
    ("amount_total", "12000", "amount_total is not a non-negative integer"),
    ("amount_total", -5, "amount_total is not a non-negative integer"),
    ("currency", 840, "currency is not a string"),
    # before: the database refused the row, and its error (not a reason) was stored as the event's last error
    ("currency", "usdt", "currency is not a three-letter currency code"),
    ("amount_total", 2**31, "amount_total is beyond the largest amount coursepipe records (2147483647)"),
    ("total_details", {"amount_tax": 2**31, "amount_discount": 0}, "total_details.amount_tax is beyond the largest"),
    # before: read as Stripe's shape, an AttributeError or TypeError retried five times
    ("line_items", ["x"], "line_items is not an object"),
    ("line_items", {"data": 7}, "line_items.data is not a list"),
    ("line_items", {"data": ["price_1"]}, "line_items.data[0] is not an object"),
    ("line_items", {"data": [{"price": ["p"]}]}, "line_items.data[0].price is not a price"),
    ("line_items", {"data": [{"price": {"id": 5}}]}, "line_items.data[0].price.id is not a string"),
]


@pytest.mark.parametrize("field, value, message", MALFORMED_CHECKOUTS)
def test_a_malformed_checkout_fails_at_once_with_its_reason_and_creates_nothing(database, field, value, message):
    """A verified event of the wrong shape will never succeed: failed on the first attempt, not retried."""
    _catalog(database)
    event = checkout(cs="cs_bad", pi="pi_bad")
    event["data"]["object"][field] = value
    result = deliver(database, event)
    assert result.outcome is inbox.Outcome.FAILED and message in result.error
    row = inbox_row(database, event)
    assert row.status == InboxStatus.FAILED and row.attempts == 1 and message in row.last_error
    assert _count(database, StudentCourseEnrollment) == 0 and _count(database, Student) == 0
    assert _count(database, OutboxMessage) == 0
    assert deliver(database, event).outcome is inbox.Outcome.SKIPPED  # delivered twice: still failed, once
    assert inbox_row(database, event).attempts == 1


def test_a_malformed_copy_after_a_good_fulfilment_changes_nothing(database):
    _catalog(database)
    good = checkout(cs="cs_1", pi="pi_1")
    assert deliver(database, good).outcome is inbox.Outcome.PROCESSED
    before = state(database)
    bad = checkout(cs="cs_1", pi="pi_1")
    bad["data"]["object"]["amount_total"] = "12000"
    assert deliver(database, bad).outcome is inbox.Outcome.FAILED
    assert state(database) == before


@pytest.mark.parametrize("marked", [False, True], ids=["unmarked", "marked as a purchase"])
def test_a_malformed_copy_first_then_the_good_event_under_a_new_id_fulfils_once(database, marked):
    """Wrong order: the bad copy fails on its own; the good one that follows is fulfilled, once."""
    _catalog(database)
    bad = checkout(cs="cs_1", pi="pi_1")
    bad["data"]["object"]["amount_total"] = "12000"
    assert deliver(database, bad, marked=marked).outcome is inbox.Outcome.FAILED
    good = checkout(cs="cs_1", pi="pi_1")
    assert deliver(database, good, marked=marked).outcome is inbox.Outcome.PROCESSED
    assert deliver(database, good, marked=marked).outcome is inbox.Outcome.SKIPPED  # twice
    [enrollment] = state(database)["enrollments"]
    assert enrollment["status"] == "active" and _count(database, StudentCourseEnrollment) == 1
    assert inbox_row(database, bad).status == InboxStatus.FAILED


def test_the_return_of_a_package_whose_payment_is_pending_has_granted_nothing_yet(database):
    """`credits_granted` read {} for a pending (or failed) package, where a pending course reads null."""
    from tasks.purchases import selling

    _package(database)
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000, payment_status="unpaid"))
    with database.session_scope() as s:
        assert selling.fulfilled(s, "cs_p")["credits_granted"] is None
    deliver(database, checkout(cs="cs_p", pi="pi_p", package="P10", amount=9000,
                               type_="checkout.session.async_payment_succeeded"))
    with database.session_scope() as s:
        assert selling.fulfilled(s, "cs_p")["credits_granted"] == {"group": 10}


def test_a_package_paid_asynchronously_in_the_wrong_order_and_twice_is_credited_once(database):
    """The async success before its pending checkout, then both again: one lot of what was sold."""
    from db.models import PackagePurchase

    _package(database, validity_days=30)
    success = checkout(cs="cs_w", pi="pi_w", package="P10", amount=9000,
                       type_="checkout.session.async_payment_succeeded")
    pending = checkout(cs="cs_w", pi="pi_w", package="P10", amount=9000, payment_status="unpaid")
    for event in (success, pending, success, pending):
        deliver(database, event)
    with database.session_scope() as s:
        purchase = s.scalar(select(PackagePurchase))
        assert purchase.status.value == "paid"
        assert purchase.sold == {"credit_type": "group", "quantity": 10, "validity_days": 30}
        assert credits.balances(session=s, student_id="stu_1") == {"group": 10, "private": 0}
    assert _count(database, CreditLedgerEntry) == 1
