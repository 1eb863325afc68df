"""product.updated / price.updated: drift between Stripe and what we published, through the inbox runner.
Same event twice, a stale event after a newer one, and an event that beats our own outcome to the inbox."""
from __future__ import annotations

import copy
import time

import pytest
from sqlalchemy import select

from db.enums import InboxStatus
from db.models import InboxEvent, OutboxMessage, StripeDrift
from tasks.catalog import services as catalog
from tasks.messaging import mail
from tasks.catalog import publishing
from workers import publishing as publish_calls
from tests.conftest import make_settings
from tests.signing import stripe_event
from tests.tasks.purchases.payments_support import run, store
from tests.tasks.catalog.test_catalog import course, save


@pytest.fixture
def published(database, stripe_server):
    settings = make_settings(database.url, **stripe_server.settings_changes())
    save(database, course())
    result = publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    return result


def updated(stripe_server, object_id, created=None, **changes) -> dict:
    """A `product.updated` / `price.updated` event carrying Stripe's current object, with changes."""
    store_ = stripe_server.products if object_id.startswith("prod_") else stripe_server.prices
    obj = copy.deepcopy(store_[object_id])
    obj.update(changes)
    kind = "product.updated" if obj["object"] == "product" else "price.updated"
    event = stripe_event(kind)
    event["data"]["object"] = obj
    event["created"] = created or int(time.time())
    return event


def deliver(database, event) -> InboxEvent:
    inbox_id = store(database, event)
    run(database, inbox_id)
    with database.session_scope() as s:
        row = s.get(InboxEvent, inbox_id)
        s.expunge(row)
        return row


def drift(database, open_only=True) -> list[tuple]:
    with database.session_scope() as s:
        q = select(StripeDrift).order_by(StripeDrift.id)
        if open_only:
            q = q.where(StripeDrift.resolved_at.is_(None))
        return [(d.stripe_object_id, d.field, d.expected, d.actual) for d in s.scalars(q)]


def test_an_unchanged_object_is_no_drift(database, stripe_server, published):
    assert deliver(database, updated(stripe_server, published.product_id)).status is InboxStatus.PROCESSED
    assert deliver(database, updated(stripe_server, published.price_id)).status is InboxStatus.PROCESSED
    assert drift(database) == []


def test_a_dashboard_edit_is_recorded_once_and_shown_then_resolved(database, stripe_server, published):
    product = published.product_id
    event = updated(stripe_server, product, name="Renamed in the dashboard",
                    metadata={"kind": "course", "course_code": "SFZ", "bundle": "private_credit:9"})
    deliver(database, event)
    expected = [(product, "name", "Sforzando: accents in ensemble playing", "Renamed in the dashboard"),
                (product, "metadata.bundle", "private_credit:2,group_credit:1", "private_credit:9")]
    assert drift(database) == expected
    # the same event again (a redelivery), and the same state under a new event id: nothing new
    assert deliver(database, event).status is InboxStatus.PROCESSED
    deliver(database, {**copy.deepcopy(event), "id": "evt_same_state_again", "created": event["created"] + 1})
    assert drift(database, open_only=False) == expected
    with database.session_scope() as s:
        mails = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "stripe_drift_alert")).all()
        assert [(m.recipient, m.payload["context"]["listing_code"]) for m in mails] == [("@admins", "SFZ")]
        text = mail.render("stripe_drift_alert", mails[0].payload["context"]).text
    assert "SFZ" in text and "Sforzando: accents in ensemble playing" in text and "Renamed in the dashboard" in text
    with database.session_scope() as s:
        state = publishing.stripe_state(s, "course", catalog.get_program(s, "SFZ"))
    assert [(d["field"], d["actual"]) for d in state["drift"]] == [("name", "Renamed in the dashboard"),
                                                                   ("metadata.bundle", "private_credit:9")]
    # put back in the dashboard: resolved
    deliver(database, updated(stripe_server, product, created=event["created"] + 2))
    assert drift(database) == []


def test_price_edits_and_our_own_archive_are_told_apart(database, stripe_server, published):
    event = updated(stripe_server, published.price_id, active=False)
    deliver(database, event)
    assert drift(database) == [(published.price_id, "active", "true", "false")]
    # a price change: the old price is archived by us, so its "inactive" is expected
    settings = make_settings(database.url, **stripe_server.settings_changes())
    data = course()
    data["price"] = {"amount": 13000, "currency": "eur"}
    save(database, data)
    publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    deliver(database, updated(stripe_server, published.price_id, created=event["created"] + 5))
    assert drift(database) == []


def test_a_stale_event_after_a_newer_one_is_ignored(database, stripe_server, published):
    now = int(time.time())
    newer = updated(stripe_server, published.product_id, created=now)
    older = updated(stripe_server, published.product_id, created=now - 60, name="An old name")
    assert deliver(database, newer).status is InboxStatus.PROCESSED
    row = deliver(database, older)
    assert row.status is InboxStatus.IGNORED and "stale" in row.last_error
    assert drift(database) == []


def test_an_object_not_made_by_us_is_ignored(database, stripe_server):
    foreign = stripe_server.add_product(name="Shop T-shirt")
    row = deliver(database, updated(stripe_server, foreign["id"]))
    assert row.status is InboxStatus.IGNORED
    assert drift(database) == []


def test_an_event_that_beats_our_outcome_waits_for_it(database, stripe_server, monkeypatch):
    """Stripe's webhook for the new price can arrive before we commit the price's id: it parks, and the
    outcome wakes it; then it is checked against what we published (no drift)."""
    settings = make_settings(database.url, **stripe_server.settings_changes())
    save(database, course())
    real = publishing.record_outcome
    parked: list[int] = []

    def webhook_first(*, session, intent, result=None, **kw):
        if intent.object_type == "price" and result is not None and not parked:
            session.rollback()  # nothing of ours committed yet; the webhook lands in between
            row = deliver(database, updated(stripe_server, result["id"]))
            assert row.status is InboxStatus.WAITING and row.waiting_for == f"stripe:{result['id']}"
            parked.append(row.id)
        return real(session=session, intent=intent, result=result, **kw)

    monkeypatch.setattr(publishing, "record_outcome", webhook_first)
    result = publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    assert result.woken == parked
    run(database, parked[0])  # as the actor enqueues the woken events
    with database.session_scope() as s:
        assert s.get(InboxEvent, parked[0]).status is InboxStatus.PROCESSED
    assert drift(database) == []


def test_our_own_title_change_in_flight_is_not_drift(database, stripe_server, published, monkeypatch):
    """The webhook of our product update lands before its outcome is stored: it waits (a price event
    meanwhile is checked at once), and once woken it matches what we published."""
    settings = make_settings(database.url, **stripe_server.settings_changes())
    save(database, course(title="Sforzando II"))
    real = publishing.record_outcome
    seen: dict[str, InboxEvent] = {}

    def webhooks_first(*, session, intent, result=None, **kw):
        if intent.object_type == "product" and intent.action == "update" and not seen:
            session.rollback()
            seen["product"] = deliver(database, updated(stripe_server, published.product_id))
            seen["price"] = deliver(database, updated(stripe_server, published.price_id))
        return real(session=session, intent=intent, result=result, **kw)

    monkeypatch.setattr(publishing, "record_outcome", webhooks_first)
    result = publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    assert seen["product"].status is InboxStatus.WAITING
    assert seen["price"].status is InboxStatus.PROCESSED
    assert result.woken == [seen["product"].id]
    run(database, seen["product"].id)
    with database.session_scope() as s:
        assert s.get(InboxEvent, seen["product"].id).status is InboxStatus.PROCESSED
    assert drift(database) == []


def test_a_price_deactivated_in_the_dashboard_is_recorded_once(database, stripe_server, published):
    event = updated(stripe_server, published.price_id, active=False)
    assert deliver(database, event).status is InboxStatus.PROCESSED
    first = drift(database, open_only=False)
    assert [(d[0], d[1]) for d in first] == [(published.price_id, "active")]
    # the same event again (a redelivery), and the same state under a new event id: nothing new
    assert deliver(database, event).status is InboxStatus.PROCESSED
    deliver(database, {**copy.deepcopy(event), "id": "evt_price_again", "created": event["created"] + 1})
    assert drift(database, open_only=False) == first
    with database.session_scope() as s:
        mails = s.scalars(select(OutboxMessage).where(OutboxMessage.topic == "stripe_drift_alert")).all()
    assert len(mails) == 1


def test_drift_taken_over_by_a_publish_is_resolved_without_an_event(database, stripe_server, published):
    """The admin answers a dashboard rename by changing the course to match and publishing: Stripe then holds
    what it held, so no product.updated comes; the publish's own answer resolves the drift."""
    product = published.product_id
    stripe_server.products[product]["name"] = "Renamed in the dashboard"
    deliver(database, updated(stripe_server, product))
    assert [d[1:] for d in drift(database)] == [("name", "Sforzando: accents in ensemble playing",
                                                  "Renamed in the dashboard")]
    save(database, course(title="Renamed in the dashboard"))
    settings = make_settings(database.url, **stripe_server.settings_changes())
    publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    assert drift(database) == []


def test_a_deleted_course_archived_in_the_dashboard_is_no_drift(database, stripe_server, published):
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    assert deliver(database, updated(stripe_server, published.product_id, active=False)).status \
        is InboxStatus.PROCESSED
    assert drift(database) == []


def test_a_failing_drift_check_never_undoes_the_record_of_a_stripe_call(database, stripe_server, monkeypatch):
    """The check of a call's answer ran in the transaction that records its outcome: a surprise there rolled the
    outcome back, and the next publish called Stripe again for a call it had made."""
    from db.models import StripePublication
    from tasks.catalog import drift

    def broken(**_kwargs):
        raise RuntimeError("an answer the check did not expect")

    monkeypatch.setattr(drift, "check_answer", broken)
    settings = make_settings(database.url, **stripe_server.settings_changes())
    save(database, course())
    result = publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    assert result.product_id and result.price_id
    with database.session_scope() as s:
        assert {p.status.value for p in s.scalars(select(StripePublication))} == {"succeeded"}
    calls = len(stripe_server.calls("POST"))
    publish_calls.publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    assert len(stripe_server.calls("POST")) == calls  # nothing made twice
