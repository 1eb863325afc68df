"""A checkout without metadata is identified by its line items, fetched with the real `stripe` client
from the shared local Stripe server (tests/stripe_server.py) over real HTTP."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.enums import BundleKind, CreditType, InboxStatus
from db.models import CreditPackage, StudentCourseEnrollment
from tests import inbox_api as inbox
from tasks.ledger import credits
from tests import factories
from tests.conftest import make_settings
from tests.stripe_server import StripeServer
from tests.tasks.purchases.payments_support import checkout, deliver, inbox_row, state

LINE_ITEMS = r"/v1/checkout/sessions/[^/]+/line_items"


@pytest.fixture
def stripe_api():
    server = StripeServer().start()
    yield server
    server.stop()


@pytest.fixture
def stripe_settings(database, stripe_api):
    return make_settings(database.url, **stripe_api.settings_changes())


def _sell(stripe_server: StripeServer, session_id: str, price_id: str, product_id: str, amount: int) -> None:
    stripe_server.add_product(id=product_id, name=product_id)
    stripe_server.add_price(id=price_id, product=product_id, unit_amount=amount, currency="usd")
    stripe_server.add_checkout_session(id=session_id, amount_total=amount,
                                       line_items=[{"price": price_id, "quantity": 1}])


def _bare_checkout(cs: str, pi: str, amount: int = 12000) -> dict:
    return checkout(cs=cs, pi=pi, amount=amount, metadata={})


def test_course_identified_by_its_price(database, stripe_api, stripe_settings):
    with database.session_scope() as s:
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        program.stripe_product_id, program.stripe_price_id = "prod_sfz", "price_sfz"
    _sell(stripe_api, "cs_li", "price_sfz", "prod_sfz", 12000)
    assert deliver(database, _bare_checkout("cs_li", "pi_li"), stripe_settings).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert (enrollment.stripe_price_id, enrollment.stripe_product_id) == ("price_sfz", "prod_sfz")
        assert enrollment.fulfilment_metadata["identified_by"] == "line_items"
    [call] = stripe_api.calls("GET", LINE_ITEMS)
    assert call.path == "/v1/checkout/sessions/cs_li/line_items"
    assert state(database)["enrollments"][0]["lots"] == [("private", 2, 2)]


def test_package_identified_by_its_price(database, stripe_api, stripe_settings):
    with database.session_scope() as s:
        s.add(CreditPackage(code="P3", title="Three", price_amount=3000, credit_type=CreditType.PRIVATE, quantity=3,
                            stripe_price_id="price_p3"))
    _sell(stripe_api, "cs_pk", "price_p3", "prod_p3", 3000)
    deliver(database, _bare_checkout("cs_pk", "pi_pk", 3000), stripe_settings)
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 0, "private": 3}


def test_an_unknown_price_is_ignored_and_its_refund_is_asked_of_stripe(database, stripe_api, stripe_settings):
    """A checkout without metadata whose line items name no price of ours is another sale of the account: it
    ends `ignored` with the prices it named (before: `failed`, so every other sale of a shared account was a
    failure on the dashboard). Its refund is decided by asking Stripe, and ends `ignored` too, not parked for
    WAIT_HORIZON_HOURS behind it."""
    from tests.tasks.purchases.payments_support import refund_created

    _sell(stripe_api, "cs_other", "price_elsewhere", "prod_x", 500)
    stripe_api.add_payment_intent(id="pi_other", amount=500, currency="usd")
    event = _bare_checkout("cs_other", "pi_other", 500)
    result = deliver(database, event, stripe_settings)
    assert result.outcome is inbox.Outcome.IGNORED and "price_elsewhere" in result.error
    assert inbox_row(database, event).status == InboxStatus.IGNORED and "not a course or package of ours" in \
        inbox_row(database, event).last_error
    refund = refund_created(refund_id="re_other", pi="pi_other", amount=500)
    assert deliver(database, refund, stripe_settings).outcome is inbox.Outcome.IGNORED
    row = inbox_row(database, refund)
    assert row.status is InboxStatus.IGNORED and row.waiting_for is None and "not ours" in row.last_error
    assert state(database)["enrollments"] == [] and state(database)["packages"] == []


def test_another_sale_delivered_twice_and_after_its_refund_stays_ignored(database, stripe_api, stripe_settings):
    """The same checkout of another sale twice (a redelivery, and a copy under a new event id), and its refund
    delivered before it: each ends ignored, nothing is made."""
    from tests.tasks.purchases.payments_support import refund_created

    _sell(stripe_api, "cs_other", "price_elsewhere", "prod_x", 500)
    stripe_api.add_payment_intent(id="pi_other", amount=500, currency="usd")
    refund = refund_created(refund_id="re_other", pi="pi_other", amount=500)
    assert deliver(database, refund, stripe_settings).outcome is inbox.Outcome.IGNORED  # before its checkout
    event = _bare_checkout("cs_other", "pi_other", 500)
    assert deliver(database, event, stripe_settings).outcome is inbox.Outcome.IGNORED
    assert deliver(database, event, stripe_settings).outcome is inbox.Outcome.SKIPPED  # redelivered
    copy = _bare_checkout("cs_other", "pi_other", 500)
    assert copy["id"] != event["id"]
    assert deliver(database, copy, stripe_settings).outcome is inbox.Outcome.IGNORED  # a copy: the same answer
    assert inbox_row(database, refund).status is InboxStatus.IGNORED
    assert state(database)["enrollments"] == [] and state(database)["packages"] == []


def test_stripe_unavailable_is_retried_and_no_api_key_is_permanent(database, stripe_api, stripe_settings):
    with database.session_scope() as s:
        program = factories.program(s)
        program.stripe_price_id = "price_sfz"
    _sell(stripe_api, "cs_flaky", "price_sfz", "prod_sfz", 12000)
    stripe_api.fail_next("GET", LINE_ITEMS, status=500, times=2)  # the client's one retry fails too
    event = _bare_checkout("cs_flaky", "pi_flaky")
    assert deliver(database, event, stripe_settings).outcome is inbox.Outcome.RETRY
    result = inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_row(database, event).id,
                             settings=stripe_settings)
    assert result.outcome is inbox.Outcome.PROCESSED
    unknown = _bare_checkout("cs_unknown_to_stripe", "pi_u")  # Stripe: no such session → permanent
    result = deliver(database, unknown, stripe_settings)
    assert result.outcome is inbox.Outcome.FAILED and "no line items" in result.error
    no_key = _bare_checkout("cs_nokey", "pi_nokey")
    result = deliver(database, no_key, make_settings(database.url))
    assert result.outcome is inbox.Outcome.FAILED and "STRIPE_API_KEY" in result.error


def test_refulfilment_by_session_fetches_the_line_items_it_needs(database, stripe_api, stripe_settings):
    """A checkout without metadata ignored because its price was not linked yet is fulfilled by the admin's
    re-fulfilment once the course carries the price; the line items come from Stripe between attempts."""
    from tasks.purchases import fulfilment

    with database.session_scope() as s:
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        program_id = program.id
    _sell(stripe_api, "cs_rf", "price_rf", "prod_rf", 12000)
    assert deliver(database, _bare_checkout("cs_rf", "pi_rf"), stripe_settings).outcome is inbox.Outcome.IGNORED
    with database.session_scope() as s:
        s.get(type(program), program_id).stripe_price_id = "price_rf"
    done = inbox.with_remote(database.session_scope, lambda ctx: fulfilment.refulfill_checkout_session(
        ctx=ctx, checkout_session_id="cs_rf"), settings=stripe_settings)
    assert done.kind == "course" and done.details["created_purchase"] is True
    assert state(database)["enrollments"][0]["lots"] == [("private", 2, 2)]
