"""Admin catalog API over the Flask test client; publishing runs on the worker against the local Stripe server."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from db.models import CourseProgram, CourseStep, CreditPackage, StripePublication
from tests import factories
from tests.conftest import drain, make_settings
from tests.tasks.catalog.test_catalog import course


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def test_put_creates_then_replaces_then_repeats_as_unchanged(client, admin_headers):
    created = client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    assert created.status_code == 201, created.json
    body = created.json
    assert body["change"] == "created" and body["course"]["status"] == "draft"
    assert [s["label"] for s in body["course"]["steps"]] == ["SFZ-1", "SFZ-2", "SFZ-3"]
    assert body["course"]["stripe"] == {**body["course"]["stripe"], "product_id": None, "in_sync": False}
    assert client.put("/admin/courses/SFZ", json=course(), headers=admin_headers).json["change"] == "unchanged"
    replaced = client.put("/admin/courses/SFZ", json=course(title="New title"), headers=admin_headers)
    assert replaced.status_code == 200 and replaced.json["change"] == "updated"
    got = client.get("/admin/courses/SFZ", headers=admin_headers)
    assert got.status_code == 200 and got.json["title"] == "New title"
    assert [c["code"] for c in client.get("/admin/courses", headers=admin_headers).json["courses"]] == ["SFZ"]


@pytest.mark.parametrize("body, field", [
    ({**course(), "steps": []}, "steps"),
    ({**course(), "timezone": "Nowhere/Land"}, "timezone"),
    ({**course(), "price": {"amount": 100, "currency": "EURO"}}, "price.currency"),
    ({**course(), "bundle": [{"kind": "group_credit", "quantity": 0}]}, "bundle[0].quantity"),
    ({**course(), "colour": "red"}, "colour"),
])
def test_validation_failure_is_400_naming_the_field_and_writes_nothing(client, admin_headers, runtime, body, field):
    response = client.put("/admin/courses/SFZ", json=body, headers=admin_headers)
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "validation_failed" and error["field"] == field and field in error["message"]
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(CourseProgram)) == 0


def test_non_json_body_bad_code_and_missing_course(client, admin_headers):
    response = client.put("/admin/courses/SFZ", data="not json", headers=admin_headers)
    assert response.status_code == 400 and response.json["error"]["field"] == "body"
    assert client.put("/admin/courses/bad%20code", json=course(), headers=admin_headers).json["error"]["field"] \
        == "code"
    missing = client.get("/admin/courses/NOPE", headers=admin_headers)
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    assert client.get("/admin/courses/SFZ").status_code == 401
    assert client.put("/admin/courses/SFZ", json=course(), headers={"Authorization": "Bearer nope"}).status_code \
        == 401


def test_removing_a_step_enrollments_have_is_409(client, admin_headers, runtime):
    with runtime.db.session_scope() as s:
        factories.enrollment(s, factories.student(s), factories.program(s, code="SFZ", steps=3))
        labels = [st.label for st in s.scalars(select(CourseStep).order_by(CourseStep.position))]
    body = course(steps=[{"label": label, "options": []} for label in labels[:2]])
    response = client.put("/admin/courses/SFZ", json=body, headers=admin_headers)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "step_in_use" and "SFZ-3" in response.json["error"]["message"]


def test_soft_delete(client, admin_headers, runtime):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    assert client.delete("/admin/courses/SFZ", headers=admin_headers).json == {"code": "SFZ", "deleted": True}
    assert client.get("/admin/courses/SFZ", headers=admin_headers).status_code == 404
    assert client.delete("/admin/courses/SFZ", headers=admin_headers).status_code == 404
    with runtime.db.session_scope() as s:
        assert s.scalar(select(CourseProgram.deleted_at)) is not None


@pytest.mark.parametrize("reason", [5, ["why"], {"why": "x"}, True])
def test_a_reason_that_is_not_a_string_is_a_400_on_every_action_and_changes_nothing(client, admin_headers, reason):
    """An action's `reason` (for the audit log) that was not a string was dropped without a word."""
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    for method, path in [("delete", "/admin/courses/SFZ"), ("post", "/admin/courses/SFZ/publish"),
                         ("post", "/admin/outbox/retry-dead")]:
        refused = getattr(client, method)(path, json={"reason": reason}, headers=admin_headers)
        assert refused.status_code == 400, path
        assert refused.json["error"] == {"code": "validation_failed", "field": "reason",
                                         "message": "reason: must be a string (or null)"}
    got = client.get("/admin/courses/SFZ", headers=admin_headers)
    assert got.status_code == 200 and got.json["status"] == "draft"
    assert client.get("/admin/audit", headers=admin_headers).json["entries"][0]["action"] == "course.save"


def test_publish_is_202_and_the_worker_publishes(client, admin_headers, runtime, worker, stripe_server):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    response = client.post("/admin/courses/SFZ/publish", headers=admin_headers)
    assert response.status_code == 202 and response.json["publishing"] is True
    drain(runtime)
    got = client.get("/admin/courses/SFZ", headers=admin_headers).json
    assert got["status"] == "published" and got["published"] is True
    assert got["stripe"]["product_id"] in stripe_server.products
    assert got["stripe"]["price_id"] in stripe_server.prices and got["stripe"]["in_sync"] is True
    assert [p["status"] for p in got["stripe"]["publications"]] == ["succeeded", "succeeded"]
    # options added after publishing need no Stripe call; a second publish is a no-op
    body = course()
    body["steps"][2]["options"] = ["gc_new"]
    assert client.put("/admin/courses/SFZ", json=body, headers=admin_headers).json["course"]["stripe"]["in_sync"]
    client.post("/admin/courses/SFZ/publish", headers=admin_headers)
    drain(runtime)
    assert len(stripe_server.calls("POST")) == 2
    assert client.post("/admin/courses/NOPE/publish", headers=admin_headers).status_code == 404


def test_publish_without_api_key_is_a_clear_error_and_the_course_stays_draft(database, admin_headers, runtime):
    from ingress.app import create_app

    runtime.settings = runtime.settings.with_(stripe_api_key=None)
    client = create_app(runtime.settings, runtime=runtime).test_client()
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    response = client.post("/admin/courses/SFZ/publish", headers=admin_headers)
    assert response.status_code == 503
    assert response.json["error"]["code"] == "publishing_disabled"
    assert "STRIPE_API_KEY" in response.json["error"]["message"]
    assert client.get("/admin/courses/SFZ", headers=admin_headers).json["status"] == "draft"
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StripePublication)) == 0


@pytest.mark.parametrize("path", ["/admin/courses/NOPE/publish", "/admin/packages/NOPE/publish", "/admin/packages/0/publish"])
def test_publishing_what_does_not_exist_is_404_whatever_the_configuration(admin_headers, runtime, path):
    """Before: without STRIPE_API_KEY an unknown code answered 503 publishing_disabled."""
    from ingress.app import create_app

    runtime.settings = runtime.settings.with_(stripe_api_key=None)
    client = create_app(runtime.settings, runtime=runtime).test_client()
    response = client.post(path, headers=admin_headers)
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/admin/courses/NL%0A", "/admin/packages/NL%0A", "/admin/courses/NL%0D%0A"])
def test_a_code_ending_in_a_line_break_is_refused(client, admin_headers, path):
    """Before: `NL\n` passed the code pattern (`$` matches before a final line break) and was saved, a code no
    other route could name."""
    body = course() if "courses" in path else {"title": "Ten", "price": {"amount": 9000, "currency": "usd"},
                                               "credits": {"kind": "group", "quantity": 10}}
    response = client.put(path, json=body, headers=admin_headers)
    assert response.status_code == 400, response.json
    assert client.get("/admin/courses", headers=admin_headers).json["courses"] == []
    assert client.get("/admin/packages", headers=admin_headers).json["packages"] == []


def test_packages_put_get_delete_and_validation(client, admin_headers):
    body = {"title": "Ten group classes", "price": {"amount": 9000, "currency": "usd"},
            "credits": {"kind": "group", "quantity": 10}}
    created = client.put("/admin/packages/TEN", json=body, headers=admin_headers)
    assert created.status_code == 201 and created.json["package"]["credits"] == {"kind": "group", "quantity": 10}
    assert client.put("/admin/packages/TEN", json=body, headers=admin_headers).json["change"] == "unchanged"
    bad = client.put("/admin/packages/TEN", json={**body, "credits": {"kind": "gold", "quantity": 1}},
                     headers=admin_headers)
    assert bad.status_code == 400 and bad.json["error"]["field"] == "credits.kind"
    assert client.get("/admin/packages/TEN", headers=admin_headers).json["title"] == "Ten group classes"
    assert [p["code"] for p in client.get("/admin/packages", headers=admin_headers).json["packages"]] == ["TEN"]
    assert client.delete("/admin/packages/TEN", headers=admin_headers).status_code == 200
    assert client.get("/admin/packages/TEN", headers=admin_headers).status_code == 404


def test_a_deleted_packages_stripe_price_stays_its_own_and_linking_it_again_is_409_price_in_use(
        client, admin_headers, runtime):
    """TEN linked to a price made by hand, deleted, then made again with the same body: before, a 400
    validation_failed ("already the price of package TEN (deleted)") that said neither why nor what to do."""
    body = {"title": "Ten group classes", "price": {"amount": 9000, "currency": "usd"},
            "credits": {"kind": "group", "quantity": 10}, "stripe_price_id": "price_HAND1"}
    assert client.put("/admin/packages/TEN", json=body, headers=admin_headers).status_code == 201
    assert client.delete("/admin/packages/TEN", headers=admin_headers).status_code == 200
    again = client.put("/admin/packages/TEN", json=body, headers=admin_headers)
    assert again.status_code == 409
    error = again.json["error"]
    assert (error["code"], error["field"]) == ("price_in_use", "stripe_price_id")
    assert "price_HAND1 is already the price of package TEN (deleted " in error["message"]
    assert "create another price in Stripe" in error["message"]
    assert client.get("/admin/packages/TEN", headers=admin_headers).status_code == 404  # nothing was made
    with runtime.db.session_scope() as s:
        assert s.scalars(select(CreditPackage.stripe_price_id)).all() == ["price_HAND1"]  # the deleted one keeps it
    # made again without the price: created, to be published with a price of its own
    made = client.put("/admin/packages/TEN", json={k: v for k, v in body.items() if k != "stripe_price_id"},
                      headers=admin_headers)
    assert made.status_code == 201 and made.json["package"]["stripe_price_id"] is None
    # the same answer when a live package holds the price
    client.put("/admin/packages/FIVE", json={**body, "stripe_price_id": "price_HAND2"}, headers=admin_headers)
    held = client.put("/admin/packages/TEN", json={**body, "stripe_price_id": "price_HAND2"}, headers=admin_headers)
    assert held.status_code == 409 and held.json["error"]["code"] == "price_in_use"
    assert "price_HAND2 is already the price of package FIVE:" in held.json["error"]["message"]


def test_package_publish_via_the_worker(client, admin_headers, runtime, worker, stripe_server):
    body = {"title": "Five private lessons", "price": {"amount": 30000, "currency": "usd"},
            "credits": {"kind": "private", "quantity": 5}}
    client.put("/admin/packages/FIVE", json=body, headers=admin_headers)
    assert client.post("/admin/packages/FIVE/publish", headers=admin_headers).status_code == 202
    drain(runtime)
    got = client.get("/admin/packages/FIVE", headers=admin_headers).json
    assert got["stripe_price_id"] in stripe_server.prices and got["stripe"]["in_sync"] is True
    assert stripe_server.calls("POST", "/v1/products")[0].metadata["package_code"] == "FIVE"


def test_a_price_edit_shows_on_the_storefront_once_published_as_checkout_charges_it(client, admin_headers, runtime,
                                                                                     worker, stripe_server):
    old = course()["price"]["amount"]
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    client.post("/admin/courses/SFZ/publish", headers=admin_headers)
    drain(runtime)
    sold = client.get("/v1/courses", headers=admin_headers).json["courses"][0]["price"]
    assert sold["amount"] == old and stripe_server.prices[sold["stripe_price_id"]]["unit_amount"] == old
    raised = course(price={"amount": old + 8000, "currency": "usd"})
    assert client.put("/admin/courses/SFZ", json=raised, headers=admin_headers).json["course"]["stripe"]["in_sync"] \
        is False
    # not published yet: a checkout still charges the old price, and that is what the storefront shows
    for shown in (client.get("/v1/courses", headers=admin_headers).json["courses"][0]["price"],
                  client.get("/v1/courses/SFZ", headers=admin_headers).json["price"]):
        assert shown == sold
    assert client.get("/admin/courses/SFZ", headers=admin_headers).json["price"]["amount"] == old + 8000
    client.post("/admin/courses/SFZ/publish", headers=admin_headers)
    drain(runtime)
    now_sold = client.get("/v1/courses/SFZ", headers=admin_headers).json["price"]
    assert now_sold["amount"] == old + 8000 and now_sold["stripe_price_id"] != sold["stripe_price_id"]
    assert stripe_server.prices[now_sold["stripe_price_id"]]["unit_amount"] == old + 8000


def test_a_package_price_edit_shows_once_published(client, admin_headers, runtime, worker, stripe_server):
    body = {"title": "Five private lessons", "price": {"amount": 30000, "currency": "usd"},
            "credits": {"kind": "private", "quantity": 5}}
    client.put("/admin/packages/FIVE", json=body, headers=admin_headers)
    client.post("/admin/packages/FIVE/publish", headers=admin_headers)
    drain(runtime)
    client.put("/admin/packages/FIVE", json={**body, "price": {"amount": 35000, "currency": "usd"}},
               headers=admin_headers)
    assert client.get("/v1/packages", headers=admin_headers).json["packages"][0]["price"]["amount"] == 30000
    assert client.get("/v1/packages/FIVE", headers=admin_headers).json["price"]["amount"] == 30000


def test_dashboard_edit_arrives_by_signed_webhook_and_shows_as_drift(client, admin_headers, runtime, worker,
                                                                     stripe_server):
    import copy
    import json

    from tests.signing import stripe_event, stripe_headers

    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    client.post("/admin/courses/SFZ/publish", headers=admin_headers)
    drain(runtime)
    product_id = client.get("/admin/courses/SFZ", headers=admin_headers).json["stripe"]["product_id"]
    event = stripe_event("product.updated")
    event["data"]["object"] = {**copy.deepcopy(stripe_server.products[product_id]), "name": "Edited in Stripe"}
    body = json.dumps(event)
    for _ in range(2):  # a redelivery is stored once and changes nothing
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    drain(runtime)
    drift = client.get("/admin/courses/SFZ", headers=admin_headers).json["stripe"]["drift"]
    assert [(d["field"], d["expected"], d["actual"]) for d in drift] == [
        ("name", "Sforzando: accents in ensemble playing", "Edited in Stripe")]
    listed = client.get("/admin/stripe/drift", headers=admin_headers).json["drift"]
    assert [(d["stripe_object_id"], d["event_id"]) for d in listed] == [(product_id, event["id"])]


def test_publish_actor_retries_a_stripe_outage_with_the_same_key(client, admin_headers, runtime, worker,
                                                                  stripe_server):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    stripe_server.fail_next("POST", r"/v1/prices", status=503, times=3)  # > one actor attempt (client retries once)
    assert client.post("/admin/courses/SFZ/publish", headers=admin_headers).status_code == 202
    drain(runtime)
    got = client.get("/admin/courses/SFZ", headers=admin_headers).json
    assert got["status"] == "published" and got["stripe"]["in_sync"] is True
    price_calls = stripe_server.calls("POST", "/v1/prices")
    assert [c.status for c in price_calls] == [503, 503, 503, 200]
    assert len({c.idempotency_key for c in price_calls}) == 1 and len(stripe_server.prices) == 1


def test_publish_refused_by_stripe_leaves_a_draft_with_the_error_shown(client, admin_headers, runtime, worker,
                                                                       stripe_server):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    stripe_server.fail_next("POST", r"/v1/products", status=400, body={"error": {
        "type": "invalid_request_error", "message": "Invalid string: name is too long", "param": "name"}})
    assert client.post("/admin/courses/SFZ/publish", headers=admin_headers).status_code == 202
    drain(runtime)
    got = client.get("/admin/courses/SFZ", headers=admin_headers).json
    assert got["status"] == "draft" and "name is too long" in got["stripe"]["last_error"]
    assert len(stripe_server.calls("POST", "/v1/products")) == 1  # a refusal is not retried


def test_concurrent_puts_of_a_new_course_leave_one_course(app, admin_headers, runtime):
    import threading

    statuses: list[int] = []
    start = threading.Barrier(6)

    def put():
        client = app.test_client()
        start.wait()
        statuses.append(client.put("/admin/courses/SFZ", json=course(), headers=admin_headers).status_code)

    threads = [threading.Thread(target=put) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 409}, statuses
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(CourseProgram)) == 1
        assert s.scalar(select(func.count()).select_from(CourseStep).where(CourseStep.deleted_at.is_(None))) == 3


def test_a_hand_linked_price_is_refused_at_publish_shown_and_can_be_unlinked(client, admin_headers, runtime, worker,
                                                                             stripe_server):
    body = {"title": "Five private lessons", "price": {"amount": 30000, "currency": "usd"},
            "credits": {"kind": "private", "quantity": 5}, "stripe_price_id": "price_byhand"}
    client.put("/admin/packages/FIVE", json=body, headers=admin_headers)
    refused = client.post("/admin/packages/FIVE/publish", headers=admin_headers)
    assert refused.status_code == 409 and refused.json["error"]["code"] == "not_publishable"
    assert "price_byhand" in refused.json["error"]["message"]
    shown = client.get("/admin/packages/FIVE", headers=admin_headers).json["stripe"]
    assert shown["in_sync"] is False and "price_byhand" in shown["last_error"]
    # the admin unlinks it (an explicit null), then publishing runs
    unlinked = client.put("/admin/packages/FIVE", json={**body, "stripe_price_id": None}, headers=admin_headers)
    assert unlinked.json["change"] == "updated" and unlinked.json["package"]["stripe_price_id"] is None
    assert client.post("/admin/packages/FIVE/publish", headers=admin_headers).status_code == 202
    drain(runtime)
    got = client.get("/admin/packages/FIVE", headers=admin_headers).json
    assert got["stripe_price_id"] in stripe_server.prices and got["stripe"]["in_sync"] is True


def _sold_course(runtime) -> dict:
    """SFZ published, one active enrollment; the body that reorders its steps and attaches a class."""
    with runtime.db.session_scope() as s:
        factories.enrollment(s, factories.student(s), factories.program(s, code="SFZ", steps=2))
    return course(steps=[{"label": "SFZ-2", "title": "Step 2", "options": ["gc_SFZ_2_0"]},
                         {"label": "SFZ-1", "title": "Step 1", "options": ["gc_SFZ_1_0", "gc_extra"]}],
                  bundle=[{"kind": "private_credit", "quantity": 2}])


def test_dry_run_answers_who_is_affected_and_changes_nothing_then_the_save_applies(client, admin_headers, runtime):
    from tests.tasks.catalog.test_catalog import snapshot

    body = _sold_course(runtime)
    before = snapshot(runtime.db)
    response = client.put("/admin/courses/SFZ?dry_run=true", json=body, headers=admin_headers)
    assert response.status_code == 200, response.json
    answer = response.json
    assert answer["dry_run"] is True and answer["would_apply"] is True and answer["status"] == "published"
    assert [(s["label"], s["change"], s["to_position"]) for s in answer["steps"]] == [
        ("SFZ-2", "moved", 1), ("SFZ-1", "moved", 2)]
    assert answer["options"] == [{"class_id": "gc_extra", "step": "SFZ-1", "change": "attached", "may_book": 1,
                                  "students": [{"enrollment_id": 1, "student_id": "stu_1", "progress": "unbooked",
                                                "booking_id": None, "class_id": None}]}]
    assert answer["enrollments"][0]["student_id"] == "stu_1" and answer["summary"]["enrollments_affected"] == 1
    assert snapshot(runtime.db) == before
    assert client.get("/admin/audit", headers=admin_headers).json["entries"] == []  # a dry run is no action

    saved = client.put("/admin/courses/SFZ", json={**body, "reason": "Tuesday group first"}, headers=admin_headers)
    assert saved.status_code == 200 and saved.json["impact"]["enrollments_affected"] == 1
    assert [s["label"] for s in saved.json["course"]["steps"]] == ["SFZ-2", "SFZ-1"]
    [entry] = client.get("/admin/audit", headers=admin_headers).json["entries"]
    assert (entry["action"], entry["reason"], entry["details"]["enrollments_affected"]) == \
        ("course.save", "Tuesday group first", 1)


def test_dry_run_of_a_refused_change_and_bad_input(client, admin_headers, runtime):
    from tests.admin_support import bearer, make_token

    body = _sold_course(runtime)
    body["steps"].pop()  # SFZ-1 is held by the enrollment
    answer = client.put("/admin/courses/SFZ?dry_run=true", json=body, headers=admin_headers).json
    assert answer["would_apply"] is False and answer["blocked"][0]["code"] == "step_in_use"
    assert client.put("/admin/courses/SFZ", json=body, headers=admin_headers).status_code == 409
    bad = client.put("/admin/courses/SFZ?dry_run=maybe", json=body, headers=admin_headers)
    assert bad.status_code == 400 and bad.json["error"]["field"] == "dry_run"
    invalid = client.put("/admin/courses/SFZ?dry_run=true", json={**body, "steps": []}, headers=admin_headers)
    assert invalid.status_code == 400 and invalid.json["error"]["field"] == "steps"
    viewer = bearer(make_token(runtime.db, "viewer@studio.test", "viewer"))
    assert client.put("/admin/courses/SFZ?dry_run=true", json=body, headers=viewer).status_code == 403
