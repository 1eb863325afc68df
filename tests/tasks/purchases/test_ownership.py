"""Ownership: a refund, charge or dispute about a payment with no course or package of ours ends `ignored`
with its reason (Stripe is asked outside the transaction); one of ours waits for its purchase; a parked
event nothing wakes ends `failed` after WAIT_HORIZON_HOURS; the scheduled retry of parked events is fair.

Stripe is the local Stripe server (tests/stripe_server.py) over real HTTP, asked by the real client."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from db.enums import BundleKind, InboxStatus
from db.models import InboxEvent
from db.types import utcnow
from tests import factories
from tests import inbox_api as inbox
from tests.conftest import make_settings
from tests.tasks.purchases.payments_support import (
    charge_refunded,
    checkout,
    deliver,
    dispute_created,
    inbox_row,
    refund_created,
    state,
    store,
)


@pytest.fixture
def stripe_settings(database, stripe_server):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    return make_settings(database.url, **stripe_server.settings_changes())


def test_a_refund_of_a_payment_made_elsewhere_ends_ignored_with_the_reason(database, stripe_server, stripe_settings):
    stripe_server.add_payment_intent(id="pi_shop", metadata={"order": "tshirt-42"})
    event = refund_created(refund_id="re_shop", pi="pi_shop")
    assert deliver(database, event, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    row = inbox_row(database, event)
    assert row.status is InboxStatus.IGNORED and row.waiting_for is None
    assert "pi_shop" in row.last_error and "not ours" in row.last_error
    # what was asked: the payment's checkout session (none), then the payment intent itself
    (sessions,) = stripe_server.calls("GET", "/v1/checkout/sessions")
    assert sessions.params == {"payment_intent": "pi_shop", "limit": "1"}
    assert len(stripe_server.calls("GET", "/v1/payment_intents/pi_shop")) == 1
    assert state(database)["enrollments"] == []


def test_a_dispute_on_a_checkout_that_sold_something_else_ends_ignored(database, stripe_server, stripe_settings):
    other_price = stripe_server.add_price(unit_amount=2500, currency="usd")
    stripe_server.add_checkout_session(payment_intent="pi_other", status="complete", payment_status="paid",
                                       metadata={}, line_items=[{"price": other_price["id"]}])
    event = dispute_created(dispute="dp_other", pi="pi_other")
    assert deliver(database, event, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    assert "sold no course or package of ours" in inbox_row(database, event).last_error
    assert stripe_server.calls("GET", r"/v1/checkout/sessions/cs_.*/line_items")  # decided by its line items


def test_a_subscription_payment_is_not_ours(database, stripe_server, stripe_settings):
    stripe_server.add_checkout_session(payment_intent="pi_sub", mode="subscription", metadata={})
    event = charge_refunded(pi="pi_sub", charge="ch_sub", refunds=(("re_sub", 12000),))
    assert deliver(database, event, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    assert "subscription mode" in inbox_row(database, event).last_error


def test_a_refund_of_our_checkout_waits_for_its_purchase_and_is_applied_when_it_comes(
        database, stripe_server, stripe_settings):
    stripe_server.add_checkout_session(payment_intent="pi_ours", status="complete", payment_status="paid",
                                       metadata={"kind": "course", "course_code": "SFZ"})
    refund = refund_created(refund_id="re_ours", pi="pi_ours")
    assert deliver(database, refund, settings=stripe_settings).outcome is inbox.Outcome.WAITING
    assert inbox_row(database, refund).waiting_for == "payment:pi_ours"
    deliver(database, checkout(cs="cs_ours", pi="pi_ours"), settings=stripe_settings)
    assert inbox_row(database, refund).status is InboxStatus.PROCESSED
    assert state(database)["enrollments"][0]["status"] == "revoked"


def test_a_refund_of_a_checkout_for_a_course_not_imported_yet_waits_for_it(database, stripe_server, stripe_settings):
    """Before: the session's course was unknown here, so the refund ended `ignored` for good; the course imported
    and the checkout replayed, the student kept access to a refunded course."""
    stripe_server.add_checkout_session(payment_intent="pi_new", status="complete", payment_status="paid",
                                       metadata={"kind": "course", "course_code": "NEW"})
    refund = refund_created(refund_id="re_new", pi="pi_new")
    assert deliver(database, refund, settings=stripe_settings).outcome is inbox.Outcome.WAITING
    purchase = checkout(cs="cs_new", pi="pi_new", course="NEW")
    assert deliver(database, purchase, settings=stripe_settings).outcome is inbox.Outcome.FAILED  # unknown course
    with database.session_scope() as s:
        factories.program(s, code="NEW", bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    with database.session_scope() as s:
        inbox.replay(session=s, inbox_id=inbox_row(database, purchase).id)
    from tests.tasks.purchases.payments_support import run

    run(database, inbox_row(database, purchase).id, settings=stripe_settings)
    assert inbox_row(database, refund).status is InboxStatus.PROCESSED
    [enrollment] = state(database)["enrollments"]
    assert enrollment["status"] == "revoked" and state(database)["balances"]["private"] == 0


def test_a_payment_intent_whose_metadata_names_a_course_is_ours(database, stripe_server, stripe_settings):
    stripe_server.add_payment_intent(id="pi_meta", metadata={"kind": "course", "course_code": "SFZ"})
    event = dispute_created(dispute="dp_meta", pi="pi_meta")
    assert deliver(database, event, settings=stripe_settings).outcome is inbox.Outcome.WAITING


def test_a_dispute_that_does_not_name_its_payment_is_matched_through_its_charge(database, stripe_server,
                                                                                stripe_settings):
    stripe_server.add_charge(id="ch_known", payment_intent="pi_known")
    stripe_server.add_payment_intent(id="pi_known", metadata={})
    stray = dispute_created(dispute="dp_nopi", pi=None, charge="ch_known")
    assert deliver(database, stray, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    assert "pi_known" in inbox_row(database, stray).last_error
    stripe_server.add_charge(id="ch_legacy", payment_intent=None)
    legacy = dispute_created(dispute="dp_legacy", pi=None, charge="ch_legacy")
    assert deliver(database, legacy, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    assert "has no payment intent" in inbox_row(database, legacy).last_error


def test_a_failed_checkout_of_the_payment_in_our_inbox_keeps_the_refund_waiting_without_asking(
        database, stripe_server, stripe_settings):
    failed = checkout(cs="cs_unknown", pi="pi_unknown", course="NOPE")
    assert deliver(database, failed, settings=stripe_settings).outcome is inbox.Outcome.FAILED
    refund = refund_created(refund_id="re_w", pi="pi_unknown")
    assert deliver(database, refund, settings=stripe_settings).outcome is inbox.Outcome.WAITING
    assert stripe_server.calls("GET") == []


OTHER_KIND = {"kind": "membership", "plan": "gold"}  # the account's other sales use `kind` for their own purpose


def test_another_sale_under_its_own_metadata_kind_and_its_refund_end_ignored(database, stripe_server, stripe_settings):
    """A checkout whose `metadata.kind` is neither course nor package and that names no course or package code is
    decided by its line items like any other sale of the account: ignored, and its refund with it, not parked
    for WAIT_HORIZON_HOURS behind a checkout that counted as ours."""
    other_price = stripe_server.add_price(unit_amount=2500, currency="usd")
    stripe_server.add_checkout_session(id="cs_gold", payment_intent="pi_gold", status="complete",
                                       payment_status="paid", metadata=OTHER_KIND,
                                       line_items=[{"price": other_price["id"]}])
    sale = checkout(cs="cs_gold", pi="pi_gold", metadata=OTHER_KIND)
    result = deliver(database, sale, settings=stripe_settings)
    assert result.outcome is inbox.Outcome.IGNORED and other_price["id"] in result.error
    refund = refund_created(refund_id="re_gold", pi="pi_gold")
    assert deliver(database, refund, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    row = inbox_row(database, refund)
    assert row.waiting_for is None and "sold no course or package of ours" in row.last_error
    assert state(database)["enrollments"] == [] and state(database)["packages"] == []


def test_a_failed_checkout_of_another_kind_in_our_inbox_does_not_keep_its_refund_waiting(
        database, stripe_server, stripe_settings):
    """Failed without STRIPE_API_KEY (its line items could not be read), a checkout whose metadata uses `kind` for
    another sale claims nothing: the refund asks Stripe, which says the payment is not ours."""
    stripe_server.add_checkout_session(id="cs_gold", payment_intent="pi_gold", status="complete",
                                       payment_status="paid", metadata=OTHER_KIND, line_items=[])
    sale = checkout(cs="cs_gold", pi="pi_gold", metadata=OTHER_KIND)
    assert deliver(database, sale, settings=make_settings(database.url)).outcome is inbox.Outcome.FAILED
    refund = refund_created(refund_id="re_gold", pi="pi_gold")
    assert deliver(database, refund, settings=stripe_settings).outcome is inbox.Outcome.IGNORED
    assert stripe_server.calls("GET", "/v1/checkout/sessions")  # asked, not decided by the failed checkout


def test_stripe_down_is_retried_not_decided(database, stripe_server, stripe_settings):
    stripe_server.fail_next("GET", "/v1/checkout/sessions", status=500, times=2)  # the client retries once
    event = refund_created(refund_id="re_down", pi="pi_down")
    assert deliver(database, event, settings=stripe_settings).outcome is inbox.Outcome.RETRY
    assert inbox_row(database, event).status is InboxStatus.PENDING


def test_a_charge_without_a_payment_intent_is_not_a_checkout_payment(database):
    event = charge_refunded(pi=None, charge="ch_old")
    assert deliver(database, event).outcome is inbox.Outcome.IGNORED
    assert "no payment intent" in inbox_row(database, event).last_error


# --------------------------------------------------------------------------- the wait horizon, fairness


def _park(database, n: int, received_ago: timedelta = timedelta(0)) -> list[int]:
    ids = []
    for i in range(n):
        ids.append(store(database, refund_created(refund_id=f"re_park_{i}", pi=f"pi_park_{i}")))
    for inbox_id in ids:
        assert inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_id).outcome is inbox.Outcome.WAITING
    with database.session_scope() as s:
        s.execute(update(InboxEvent).where(InboxEvent.id.in_(ids)).values(received_at=utcnow() - received_ago))
    return ids


def test_a_parked_event_nothing_wakes_within_the_horizon_ends_failed_with_what_it_waited_for(database):
    old = _park(database, 1, received_ago=timedelta(hours=73))[0]
    with database.session_scope() as s:
        s.execute(update(InboxEvent).where(InboxEvent.id != old).values(received_at=utcnow()))
    fresh = store(database, refund_created(refund_id="re_fresh", pi="pi_fresh"))
    inbox.run_event(unit_of_work=database.session_scope, inbox_id=fresh)
    with database.session_scope() as s:
        assert inbox_api_expire(s, timedelta(hours=72)) == [old]
    with database.session_scope() as s:
        row, other = s.get(InboxEvent, old), s.get(InboxEvent, fresh)
        assert row.status is InboxStatus.FAILED and row.processed_at is not None
        assert row.waiting_for == "payment:pi_park_0"  # kept: what provides it later still wakes it
        assert row.last_error.startswith("waited for payment:pi_park_0 for more than 72 hours")
        assert other.status is InboxStatus.WAITING
    with database.session_scope() as s:
        inbox.replay(session=s, inbox_id=old)  # failed, so an admin can replay it
        assert s.get(InboxEvent, old).status is InboxStatus.PENDING


@pytest.mark.parametrize("marked", [False, True], ids=["general path", "purchase fast path"])
def test_a_refund_that_gave_up_waiting_is_applied_when_its_purchase_comes_after_all(database, marked):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    refund = _park(database, 1, received_ago=timedelta(hours=73))[0]
    with database.session_scope() as s:
        assert inbox_api_expire(s, timedelta(hours=72)) == [refund]
    with database.session_scope() as s:
        assert s.get(InboxEvent, refund).processed_at is not None  # ended failed
    result = deliver(database, checkout(cs="cs_park", pi="pi_park_0"), marked=marked)
    assert result.woken == [refund]
    with database.session_scope() as s:
        row = s.get(InboxEvent, refund)
        assert (row.status, row.waiting_for, row.last_error) == (InboxStatus.PROCESSED, None, None)
    enrollment = state(database)["enrollments"][0]
    assert (enrollment["status"], enrollment["refunded"], enrollment["lots"]) == ("revoked", 12000,
                                                                                   [("private", 2, 0)])


def test_a_refund_that_gave_up_waiting_is_woken_by_the_refulfilment_of_its_failed_purchase(database):
    from tasks.inbox.context import HandlerContext
    from tasks.purchases import fulfilment

    purchase = checkout(cs="cs_late", pi="pi_late", course="LATE")
    assert deliver(database, purchase).outcome is inbox.Outcome.FAILED  # no such course yet
    refund = store(database, refund_created(refund_id="re_late", pi="pi_late"))
    assert inbox.run_event(unit_of_work=database.session_scope, inbox_id=refund).outcome is inbox.Outcome.WAITING
    with database.session_scope() as s:
        s.execute(update(InboxEvent).where(InboxEvent.id == refund).values(received_at=utcnow() - timedelta(hours=73)))
    with database.session_scope() as s:
        assert inbox_api_expire(s, timedelta(hours=72)) == [refund]
    with database.session_scope() as s:  # the admin creates the course, then re-fulfils the checkout
        factories.program(s, code="LATE", bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    with database.session_scope() as s:
        done = fulfilment.refulfill_checkout_session(ctx=HandlerContext(session=s), checkout_session_id="cs_late")
    assert done.woken == [refund]
    assert inbox.run_event(unit_of_work=database.session_scope, inbox_id=refund).outcome is inbox.Outcome.PROCESSED
    enrollment = state(database)["enrollments"][0]
    assert (enrollment["status"], enrollment["lots"]) == ("revoked", [("private", 2, 0)])


def inbox_api_expire(session, horizon):
    from tasks.inbox.parking import expire_waiting

    return expire_waiting(session=session, horizon=horizon)


def test_the_scheduled_retry_reaches_every_parked_event_at_any_backlog(database):
    parked = _park(database, 5)
    seen: list[int] = []
    for _ in range(3):
        with database.session_scope() as s:
            batch = inbox.requeue_waiting(session=s, limit=2)
        unseen = set(parked) - set(seen)
        # the rows sent longest ago first: none is taken again while another has not had its turn
        assert len(set(batch) & unseen) == min(2, len(unseen))
        seen += [i for i in batch if i not in seen]
        for inbox_id in batch:  # nothing arrived: each parks again
            assert inbox.run_event(unit_of_work=database.session_scope,
                                   inbox_id=inbox_id).outcome is inbox.Outcome.WAITING
    assert sorted(seen) == sorted(parked)


def test_the_retry_job_ends_expired_rows_and_records_how_many(database, runtime, worker):
    old = _park(runtime.db, 2, received_ago=timedelta(hours=5))
    runtime.settings = runtime.settings.with_(wait_horizon_hours=4)
    from workers.actors import requeue_parked

    assert requeue_parked() == (0, 2)
    with runtime.db.session_scope() as s:
        assert {s.get(InboxEvent, i).status for i in old} == {InboxStatus.FAILED}


@pytest.mark.parametrize("why", ["livemode", "subscription"])
def test_refulfilment_refuses_a_checkout_the_handlers_ignore(database, why):
    """A checkout ignored as another Stripe mode's (a test payment at a live installation) or as a subscription is
    no purchase: re-fulfilling it by its session id is refused with the reason, and nothing is created."""
    from tasks.inbox.context import HandlerContext
    from tasks.purchases import fulfilment

    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    event = checkout(cs="cs_ign", pi="pi_ign")
    if why == "livemode":
        event["livemode"] = True
    else:
        event["data"]["object"]["mode"] = "subscription"
    live = make_settings(database.url, stripe_api_key="sk_test_x" if why == "livemode" else None)
    assert deliver(database, event, settings=live).outcome is inbox.Outcome.IGNORED
    with database.session_scope() as s:
        with pytest.raises(fulfilment.NotFulfillable, match="cs_ign" if why == "subscription" else "livemode"):
            fulfilment.refulfill_checkout_session(ctx=HandlerContext(session=s, settings=live),
                                                  checkout_session_id="cs_ign")
    assert state(database)["enrollments"] == []
