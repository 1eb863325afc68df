"""Stripe mode and version: an event of the other mode than the key's is ignored with the reason; every
Stripe call names the pinned API version (the local server refuses any other)."""
from __future__ import annotations

import pytest
import stripe
from sqlalchemy import func, select

from db.enums import BundleKind, InboxStatus
from db.models import StudentCourseEnrollment
from tasks.stripe_api import STRIPE_API_VERSION, key_mode, mode_mismatch, stripe_client
from tests import factories
from tests import inbox_api as inbox
from tests.conftest import make_settings
from tests.tasks.purchases.payments_support import checkout, deliver, dispute_created, inbox_row, run, store


def _catalog(database):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))


def _enrollments(database) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(StudentCourseEnrollment))


@pytest.mark.parametrize("key, mode", [("sk_live_abc", "live"), ("rk_live_abc", "live"), ("sk_test_abc", "test"),
                                       ("rk_test_abc", "test"), (None, None), ("pk_live_abc", None)])
def test_key_mode_is_read_from_the_key_prefix(key, mode):
    assert key_mode(key) == mode


@pytest.mark.parametrize("marked", [False, True])
def test_a_live_event_under_a_test_key_ends_ignored_with_the_reason_and_changes_nothing(database, marked):
    _catalog(database)
    settings = make_settings(database.url, stripe_api_key="sk_test_123")
    event = checkout(cs="cs_live", pi="pi_live")
    event["livemode"] = True
    result = deliver(database, event, settings=settings, marked=marked)
    assert result.outcome is inbox.Outcome.IGNORED
    row = inbox_row(database, event)
    assert row.status is InboxStatus.IGNORED
    assert "livemode mismatch" in row.last_error and "test-mode key" in row.last_error
    assert _enrollments(database) == 0


def test_a_test_event_under_a_live_key_is_ignored_too_and_a_matching_one_runs(database):
    _catalog(database)
    live = make_settings(database.url, stripe_api_key="sk_live_123")
    stray = dispute_created(pi="pi_x")  # livemode false in the recorded fixture
    assert deliver(database, stray, settings=live).outcome is inbox.Outcome.IGNORED
    assert "a test-mode event" in inbox_row(database, stray).last_error
    paid = checkout(cs="cs_ok", pi="pi_ok")
    paid["livemode"] = True
    assert deliver(database, paid, settings=live).outcome is inbox.Outcome.PROCESSED
    assert _enrollments(database) == 1


def test_without_a_key_there_is_no_mode_to_hold_an_event_against(database):
    _catalog(database)
    event = checkout(cs="cs_any", pi="pi_any")
    event["livemode"] = True
    assert mode_mismatch(make_settings(database.url), event) is None
    assert deliver(database, event, settings=make_settings(database.url)).outcome is inbox.Outcome.PROCESSED


def test_a_stored_event_of_the_other_mode_is_ignored_however_it_is_run(database):
    """Replay, the sweeper, reconcile: every path goes through the same handler table."""
    _catalog(database)
    event = checkout(cs="cs_r", pi="pi_r")
    event["livemode"] = True
    inbox_id = store(database, event)
    result = run(database, inbox_id, settings=make_settings(database.url, stripe_api_key="sk_test_1"), fast=False)
    assert result.outcome is inbox.Outcome.IGNORED and _enrollments(database) == 0


def test_every_stripe_call_names_the_pinned_api_version(stripe_server, database):
    settings = make_settings(database.url, **stripe_server.settings_changes())
    stripe_client(settings).v1.products.create(params={"name": "Sforzando"})
    (call,) = stripe_server.calls("POST", "/v1/products")
    assert call.headers["Stripe-Version"] == STRIPE_API_VERSION
    # the local server holds a client to it: another version is refused, as a changed default would be
    other = stripe.StripeClient(stripe_server.api_key, base_addresses={"api": stripe_server.url},
                                stripe_version="2020-08-27")
    with pytest.raises(stripe.InvalidRequestError, match="Stripe-Version"):
        other.v1.products.create(params={"name": "Old"})
