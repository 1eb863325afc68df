"""Reconciliation over Stripe's Events API: every handled event of the last 30 days the inbox lacks is
stored exactly as the webhook would have stored it, undelivered ones first, a bounded number of calls a run.

Stripe is the local Stripe server (tests/stripe_server.py) over real HTTP, asked by the real client."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, func, select

from db.enums import BundleKind, CreditType, InboxSource, InboxStatus
from db.models import CreditPackage, InboxEvent
from tasks.purchases import reconcile
from tests import factories
from tests import inbox_api as inbox
from tests.conftest import _truncate, drain, make_settings
from tests.signing import stripe_event, stripe_headers
from tests.tasks.purchases import payments_support as pay
from workers import job_runs, reconciling

HANDLED = reconciling.handled_stripe_types(inbox.HANDLERS)


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def _catalog(database):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        s.add(CreditPackage(code="P5", title="P5 pack", price_amount=5000, credit_type=CreditType.GROUP, quantity=5))


def _run_rt(database, settings):
    return SimpleNamespace(settings=settings, db=database, handlers=inbox.HANDLERS)


def _reconcile(database, settings, **kw) -> dict:
    """One run as the job makes it, recorded as a finished job_run; what it stored is then run."""
    sent: list[int] = []
    result = reconciling.run(_run_rt(database, settings), enqueue=sent.extend, **kw)
    run_id = job_runs.claim_period(database, job="reconcile", period=f"t{time.monotonic_ns()}", runner="test")
    job_runs.finish_job_run(database, run_id, result)
    for inbox_id in sent:
        pay.run(database, inbox_id, settings)
    return result


def _disputes_elsewhere(stripe_server, count: int, delivered: bool = True) -> list[dict]:
    """`count` dispute events a second apart, oldest first, about payments that are not ours (each ends ignored)."""
    events = []
    for i in range(count):
        event = pay.dispute_created(dispute=f"dp_{i}", pi=f"pi_{i}")
        event["created"] = int(time.time()) - 100 + i
        events.append(stripe_server.add_event(event, delivered=delivered))
        stripe_server.add_payment_intent(id=f"pi_{i}", metadata={})
    return events


def _rows(database) -> dict[str, tuple[str, str]]:
    with database.session_scope() as s:
        return {e.event_id: (e.type, e.status.value) for e in s.scalars(select(InboxEvent))}


def test_the_handled_types_are_what_the_handler_table_applies():
    assert "charge.dispute.created" in HANDLED and "refund.updated" in HANDLED and "price.updated" in HANDLED
    assert len(HANDLED) <= reconcile.TYPES_PER_CALL and all("." in t for t in HANDLED)


def test_undelivered_events_are_listed_first_then_every_event_page_by_page(database, settings, stripe_server,
                                                                           monkeypatch):
    monkeypatch.setattr(reconcile, "PAGE_SIZE", 2)
    now = int(time.time())
    failed = [stripe_server.add_event(pay.refund_created(refund_id=f"re_f{i}"), delivered=False) for i in range(3)]
    fine = [stripe_server.add_event(pay.dispute_created(dispute=f"dp_{i}")) for i in range(2)]
    old = pay.refund_created(refund_id="re_old")
    old["created"] = now - 31 * 86400
    stripe_server.add_event(old, delivered=False)  # outside the window
    other = stripe_event("customer.created")
    stripe_server.add_event(other, delivered=False)  # a type we do not handle
    listing = reconcile.list_events(settings=settings, types=HANDLED)
    ids = [e["id"] for e in listing.events]
    assert ids[:3] == sorted([e["id"] for e in failed], key=ids.index) and set(ids[:3]) == {e["id"] for e in failed}
    assert set(ids) == {e["id"] for e in failed + fine} and listing.undelivered == 3 and listing.cursor is None
    calls = stripe_server.calls("GET", "/v1/events")
    assert len(calls) == listing.calls == 2 + 3  # 3 undelivered in pages of 2, then 5 events in pages of 2
    first = calls[0].params
    assert first["delivery_success"] == "false" and first["limit"] == "2" and first["types"] == HANDLED
    assert abs(int(first["created"]["gte"]) - (now - 30 * 86400)) < 60
    assert calls[1].params["starting_after"] == ids[1]
    assert "delivery_success" not in calls[2].params and "starting_after" not in calls[2].params
    assert all(c.status == 200 for c in calls)


def test_a_run_makes_at_most_its_calls_and_the_next_run_resumes_where_it_stopped(database, settings, stripe_server,
                                                                                 monkeypatch):
    monkeypatch.setattr(reconcile, "PAGE_SIZE", 2)
    _catalog(database)
    events = _disputes_elsewhere(stripe_server, 7)
    first = _reconcile(database, settings, max_calls=3)  # 1 undelivered call (empty) + 2 pages of the walk
    assert first["calls"] == 3 and first["recovered"] == 4 and first["cursor"] == events[3]["id"]
    second = _reconcile(database, settings, max_calls=3)
    resumed = [c for c in stripe_server.calls("GET", "/v1/events") if "delivery_success" not in c.params]
    assert resumed[2].params["starting_after"] == events[3]["id"]
    assert second["recovered"] == 3 and second["cursor"] is None
    assert {status for _, status in _rows(database).values()} == {"ignored"}
    assert len(_rows(database)) == 7


def test_an_event_recovered_and_then_delivered_is_one_row_and_the_other_way_round(database, settings,
                                                                                  stripe_server, client):
    _catalog(database)
    recovered = stripe_server.add_event(pay.checkout(cs="cs_r", pi="pi_r"), delivered=False)
    assert _reconcile(database, settings)["recovered"] == 1
    body = json.dumps(recovered)
    answer = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert answer.status_code == 200 and answer.get_json()["duplicate"] is True
    delivered = pay.checkout(cs="cs_d", pi="pi_d", student="stu_2")
    body = json.dumps(delivered)
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).get_json()["duplicate"] is False
    stripe_server.add_event(delivered)
    again = _reconcile(database, settings)
    assert again["recovered"] == 0 and again["checked"] == 2
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(InboxEvent)) == 2
        row = s.scalar(select(InboxEvent).where(InboxEvent.event_id == recovered["id"]))
        # stored as the webhook stores it: the event's own id, type, subject, payload and time
        assert (row.source, row.type, row.subject) == (InboxSource.STRIPE, "checkout.session.completed",
                                                       "payment:pi_r")
        assert row.payload == recovered and row.status is InboxStatus.PROCESSED
        assert int(row.occurred_at.timestamp()) == recovered["created"]


def _one_of_each_type() -> list[dict]:
    """One story over every handled type, in the order Stripe sent it: two course purchases, a package
    paid late, one whose payment failed, refunds in each shape, a dispute opened and won, catalog edits."""
    events = [
        pay.checkout(cs="cs_1", pi="pi_1", student="stu_1"),
        pay.checkout(cs="cs_2", pi="pi_2", student="stu_2"),
        pay.checkout(cs="cs_3", pi="pi_3", student="stu_1", package="P5", amount=5000, payment_status="unpaid"),
        pay.checkout(cs="cs_3", pi="pi_3", student="stu_1", package="P5", amount=5000, payment_status="unpaid",
                     type_="checkout.session.async_payment_succeeded"),
        pay.checkout(cs="cs_4", pi="pi_4", student="stu_2", package="P5", amount=5000, payment_status="unpaid"),
        pay.checkout(cs="cs_4", pi="pi_4", student="stu_2", package="P5", amount=5000, payment_status="unpaid",
                     type_="checkout.session.async_payment_failed"),
        pay.refund_created(refund_id="re_1", pi="pi_1", amount=3000, status="pending"),
        pay.refund_created(refund_id="re_1", pi="pi_1", amount=3000, status="succeeded"),
        pay.refund_created(refund_id="re_2", pi="pi_3", amount=5000),
        pay.charge_refunded(pi="pi_1", amount=12000, refunded=3000, refunds=[("re_1", 3000)]),
        pay.dispute_created(dispute="dp_2", pi="pi_2", charge="ch_2"),
        pay.dispute_closed(dispute="dp_2", pi="pi_2", charge="ch_2", status="won"),
        stripe_event("product.updated"),
        stripe_event("price.updated"),
    ]
    events[7]["type"] = "refund.updated"
    events[8]["type"] = "charge.refund.updated"
    base = int(time.time()) - 3600
    for i, event in enumerate(events):
        event["created"] = base + i
    assert sorted({e["type"] for e in events}) == HANDLED
    return events


def _final_state(database) -> dict:
    return {"stu_1": pay.state(database, "stu_1"), "stu_2": pay.state(database, "stu_2"), "inbox": _rows(database)}


def test_reconcile_restores_the_same_final_state_when_one_delivered_event_of_each_type_is_lost(
        database, settings, stripe_server):
    events = _one_of_each_type()
    for cs, pi in (("cs_1", "pi_1"), ("cs_2", "pi_2")):
        stripe_server.add_checkout_session(id=cs, payment_intent=pi, metadata={"kind": "course", "course_code": "SFZ"})
    for cs, pi in (("cs_3", "pi_3"), ("cs_4", "pi_4")):
        stripe_server.add_checkout_session(id=cs, payment_intent=pi, metadata={"kind": "package", "package_code": "P5"})
    for event in events:
        stripe_server.add_event(event)  # Stripe delivered every one of them
    _catalog(database)
    for event in events:
        pay.deliver(database, event, settings)
    expected = _final_state(database)
    assert expected["stu_1"]["enrollments"][0]["refunded"] == 3000
    assert expected["stu_2"]["enrollments"][0]["status"] == "active" and expected["stu_2"]["disputes"]

    # the same story where the first event of each type was lost (a database restored from a backup)
    _truncate(database)
    _catalog(database)
    lost, seen = set(), set()
    for event in events:
        if event["type"] not in seen:
            seen.add(event["type"])
            lost.add(event["id"])
    for event in events:
        if event["id"] not in lost:
            pay.deliver(database, event, settings)
    assert not set(_rows(database)) & lost
    result = _reconcile(database, settings)
    assert result["recovered"] == len(lost) == len(HANDLED)
    assert result["recovered_types"] == {t: 1 for t in HANDLED}
    # a parked event woken by what reconcile brought runs as it would have
    with database.session_scope() as s:
        for inbox_id in s.scalars(select(InboxEvent.id).where(InboxEvent.status.in_(
                (InboxStatus.PENDING, InboxStatus.WAITING)))).all():
            pay.run(database, inbox_id, settings)
    assert _final_state(database) == expected


def test_the_scheduled_job_stores_what_it_recovered_counts_it_and_the_dashboard_says_so(
        database, runtime, worker, client, admin_headers, stripe_server):
    from tests.ingress.test_metrics import scrape, value

    _catalog(database)
    before = value(scrape(client), "coursepipe_reconcile_recovered_total", type="checkout.session.completed")
    stripe_server.add_event(pay.checkout(cs="cs_job", pi="pi_job"), delivered=False)
    run_id = job_runs.claim_period(database, job="reconcile", period="p1", runner="test")
    runtime.actors["reconcile"].send(job_run=run_id)
    drain(runtime)
    run, result = job_runs.last_result(database, "reconcile")
    assert run.id == run_id and result["recovered"] == 1
    assert result["recovered_types"] == {"checkout.session.completed": 1}
    assert set(_rows(database).values()) == {("checkout.session.completed", "processed")}
    assert value(scrape(client), "coursepipe_reconcile_recovered_total",
                 type="checkout.session.completed") == before + 1
    from tests.ingress.test_dashboard import login

    login(client)
    html = client.get("/admin/").get_data(as_text=True)
    assert 'id="reconcile"' in html and "recovered 1" in html and "checkout.session.completed" in html


def test_without_a_key_reconcile_is_skipped(database):
    assert reconciling.run(_run_rt(database, make_settings(database.url))) == {"skipped": "STRIPE_API_KEY is not set"}


def test_the_walk_goes_on_however_many_deliveries_failed(database, settings, stripe_server, monkeypatch):
    """More undelivered events than a run's calls can list (an outage longer than Stripe's retries, or another
    endpoint of the account failing): the oldest are reached by the full walk, which still advances each run."""
    monkeypatch.setattr(reconcile, "PAGE_SIZE", 2)
    _catalog(database)
    events = _disputes_elsewhere(stripe_server, 10, delivered=False)
    runs = [_reconcile(database, settings, max_calls=4)]
    while runs[-1]["cursor"] is not None and len(runs) < 5:
        runs.append(_reconcile(database, settings, max_calls=4))
    assert all(run["calls"] <= 4 for run in runs) and runs[0]["undelivered"] == 4  # two pages of the newest
    assert set(_rows(database)) == {e["id"] for e in events}  # the two oldest too
    assert len(runs) == 3  # 4 events walked a run
