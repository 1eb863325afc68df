"""Selling: prices on the read API, packages on sale, Checkout Sessions created through the real `stripe`
client (the local Stripe server), and the buyer's return fulfilling first, racing the webhook safely."""
from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import func, select

from db.models import InboxEvent, OutboxMessage, PackagePurchase, StudentCourseEnrollment
from ingress.app import create_app
from tasks.catalog import services as catalog
from tasks.catalog import publishing
from workers import publishing as publish_calls
from tests.conftest import assert_contract_kept, contract_checked, drain, make_settings
from tests.signing import stripe_headers
from tests.tasks.catalog.test_catalog import course, save

READ = {"Authorization": "Bearer selling-reader-0123456789abcdef"}
URLS = {"success_url": "https://shop.example.test/ok?cs={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://shop.example.test/cancel"}


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, read_api_tokens=("selling-reader-0123456789abcdef",), **stripe_server.settings_changes())


@pytest.fixture
def app(runtime):
    app = contract_checked(create_app(runtime.settings, runtime=runtime))
    yield app
    assert_contract_kept(app)


@pytest.fixture
def on_sale(runtime):
    """SFZ published to Stripe; package TEN (10 group credits) on sale with its own Stripe price."""
    db, settings = runtime.db, runtime.settings
    save(db, course())
    publish_calls.publish(publishing.COURSE, "SFZ", unit_of_work=db.session_scope, settings=settings)
    with db.session_scope() as s:
        catalog.save_package(session=s, package=catalog.parse_package(
            {"title": "Ten group classes", "price": {"amount": 9000, "currency": "eur"},
             "credits": {"kind": "group_credit", "quantity": 10}, "validity_days": 180}, code="TEN"))
    publish_calls.publish(publishing.PACKAGE, "TEN", unit_of_work=db.session_scope, settings=settings)
    with db.session_scope() as s:
        return {"SFZ": catalog.get_program(s, "SFZ").stripe_price_id, "TEN": catalog.get_package(s, "TEN").stripe_price_id}


def _buy(client, headers=READ, **body):
    return client.post("/v1/checkout-sessions", json={"student_id": "stu_1", "course_code": "SFZ", **URLS, **body},
                       headers=headers)


def test_courses_and_packages_carry_the_stripe_price(client, on_sale):
    listed = client.get("/v1/courses", headers=READ).json["courses"][0]
    assert listed["price"] == {"amount": 12000, "currency": "eur", "stripe_price_id": on_sale["SFZ"]}
    assert client.get("/v1/courses/SFZ", headers=READ).json["price"]["stripe_price_id"] == on_sale["SFZ"]
    packages = client.get("/v1/packages", headers=READ).json["packages"]
    assert packages == [{"code": "TEN", "title": "Ten group classes",
                         "price": {"amount": 9000, "currency": "eur", "stripe_price_id": on_sale["TEN"]},
                         "credits": [{"kind": "group", "quantity": 10}], "validity_days": 180}]
    assert client.get("/v1/packages/TEN", headers=READ).json == packages[0]
    assert client.get("/v1/packages/NOPE", headers=READ).status_code == 404


def test_an_unpriced_package_is_not_on_sale(client, runtime):
    with runtime.db.session_scope() as s:
        catalog.save_package(session=s, package=catalog.parse_package(
            {"title": "Draft", "price": {"amount": 1, "currency": "eur"},
             "credits": {"kind": "group_credit", "quantity": 1}}, code="DRAFT"))
    assert client.get("/v1/packages", headers=READ).json == {"packages": []}
    assert client.get("/v1/packages/DRAFT", headers=READ).status_code == 404


def test_checkout_session_names_buyer_and_product_as_the_webhook_expects(client, on_sale, stripe_server, runtime):
    response = _buy(client)
    assert response.status_code == 201
    body = response.json
    assert set(body) == {"id", "url"} and body["id"].startswith("cs_test_") and body["url"].startswith("http")
    [call] = stripe_server.calls("POST", "/v1/checkout/sessions")
    assert call.params["client_reference_id"] == "stu_1"
    with runtime.db.session_scope() as s:
        course_id, package_id = catalog.get_program(s, "SFZ").id, catalog.get_package(s, "TEN").id
    assert call.params["metadata"] == {"kind": "course", "course_code": "SFZ", "coursepipe_course_id": str(course_id),
                                       "coursepipe_price_id": on_sale["SFZ"], "student_id": "stu_1"}
    assert call.params["line_items"] == [{"price": on_sale["SFZ"], "quantity": "1"}]
    assert call.params["mode"] == "payment" and call.params["success_url"] == URLS["success_url"]
    assert call.idempotency_key.startswith("coursepipe:checkout:")
    package = client.post("/v1/checkout-sessions", headers=READ,
                          json={"student_id": "stu_1", "package_code": "TEN", **URLS})
    assert package.status_code == 201
    assert stripe_server.calls("POST", "/v1/checkout/sessions")[-1].params["metadata"] == {
        "kind": "package", "package_code": "TEN", "coursepipe_package_id": str(package_id),
        "coursepipe_price_id": on_sale["TEN"], "student_id": "stu_1"}


def test_the_same_idempotency_key_gives_the_same_session(client, on_sale, stripe_server):
    first = _buy(client, headers={**READ, "Idempotency-Key": "order-17"}).json
    again = _buy(client, headers={**READ, "Idempotency-Key": "order-17"}).json
    other = _buy(client, headers={**READ, "Idempotency-Key": "order-18"}).json
    assert first == again and other["id"] != first["id"]
    assert len(stripe_server.checkout_sessions) == 2


def test_the_same_key_and_body_give_the_same_session_after_the_buyer_s_email_arrived(client, on_sale, stripe_server,
                                                                                      runtime):
    """Before: a repeat rebuilt the Stripe request from the database; the buyer's e-mail mirrored in between
    (a `student.upserted`) changed it, and with it the key sent to Stripe: a second session. A key bound before
    its request was kept (NULL) builds it anew, as before."""
    from db.models import CheckoutKey, Student

    first = _buy(client, headers={**READ, "Idempotency-Key": "order-42"})
    assert first.status_code == 201 and "customer_email" not in stripe_server.calls(
        "POST", "/v1/checkout/sessions")[-1].params
    with runtime.db.session_scope() as s:
        s.merge(Student(id="stu_1", email="ana@example.test"))
    again = _buy(client, headers={**READ, "Idempotency-Key": "order-42"})
    assert (again.status_code, again.json) == (201, first.json)
    assert len(stripe_server.checkout_sessions) == 1
    with runtime.db.session_scope() as s:  # bound before the request was kept with the key
        s.get(CheckoutKey, "order-42").stripe_request = None
    legacy = _buy(client, headers={**READ, "Idempotency-Key": "order-42"})
    assert legacy.status_code == 201 and stripe_server.calls("POST", "/v1/checkout/sessions")[-1].params[
        "customer_email"] == "ana@example.test"
    with runtime.db.session_scope() as s:
        assert s.get(CheckoutKey, "order-42").stripe_request["customer_email"] == "ana@example.test"


def test_a_key_sent_again_with_another_body_is_refused_and_makes_nothing(client, on_sale, stripe_server, runtime):
    """Before: the key sent to Stripe was a digest of the key and the request, so the same key with another
    student (a client bug, a key reused across buyers) silently made a second session."""
    from datetime import timedelta

    from db.models import CheckoutKey
    from tasks.purchases import selling

    first = _buy(client, headers={**READ, "Idempotency-Key": "order-9"})
    assert first.status_code == 201
    reused = _buy(client, headers={**READ, "Idempotency-Key": "order-9"}, student_id="stu_2")
    assert reused.status_code == 409 and reused.json["error"]["code"] == "idempotency_key_reused"
    assert len(stripe_server.checkout_sessions) == 1
    assert _buy(client, headers={**READ, "Idempotency-Key": "order-9"}).json == first.json  # the same: the same
    with runtime.db.session_scope() as s:  # a day later the key is free again, and the job forgets it
        s.get(CheckoutKey, "order-9").created_at -= timedelta(hours=selling.KEY_HOURS, seconds=1)
    again = _buy(client, headers={**READ, "Idempotency-Key": "order-9"}, student_id="stu_2")
    assert again.status_code == 201 and again.json["id"] != first.json["id"]
    with runtime.db.session_scope() as s:
        s.get(CheckoutKey, "order-9").created_at -= timedelta(hours=selling.KEY_HOURS, seconds=1)
        assert selling.prune_keys(s) == 1
        assert s.get(CheckoutKey, "order-9") is None


@pytest.mark.parametrize("body,status,code", [
    ({"course_code": "NOPE"}, 404, "not_found"),
    ({"course_code": None, "package_code": "NOPE"}, 404, "not_found"),
    ({"package_code": "TEN"}, 400, "invalid_request"),  # both codes
    ({"success_url": "javascript:alert(1)"}, 400, "invalid_request"),
    ({"success_url": "https://shop.example.test/ok\n"}, 400, "invalid_request"),  # before: passed the check
    ({"success_url": "https://shop.example.test/ok\x01"}, 400, "invalid_request"),  # before: sent to Stripe
    ({"cancel_url": "https://shop.example.test/no\x7f"}, 400, "invalid_request"),
    ({"student_id": ""}, 400, "invalid_request"),
    ({"course_code": "SFZ\u0000"}, 400, "invalid_request"),  # a NUL character: PostgreSQL text holds none
    ({"student_id": "stu_\ud800"}, 400, "invalid_request"),  # a lone surrogate
])
def test_bad_or_unknown_requests_are_refused_and_nothing_is_created(client, on_sale, stripe_server, body, status,
                                                                    code):
    response = _buy(client, **body)
    assert response.status_code == status and response.json["error"]["code"] == code
    assert stripe_server.calls("POST", "/v1/checkout/sessions") == []


def test_a_draft_course_is_404(client, runtime, stripe_server):
    save(runtime.db, course())
    response = _buy(client)
    assert response.status_code == 404 and stripe_server.calls("POST", "/v1/checkout/sessions") == []


def _return(client, checkout_id):
    return client.get(f"/v1/checkout-sessions/{checkout_id}", headers=READ)


def test_return_before_the_webhook_fulfils_once_and_the_webhook_adds_nothing(client, runtime, worker, on_sale,
                                                                             stripe_server):
    checkout_id = _buy(client).json["id"]
    open_state = _return(client, checkout_id).json
    assert open_state == {"id": checkout_id, "status": "open", "payment_status": "unpaid", "enrollment": None,
                          "credits_granted": None}
    paid = stripe_server.complete_checkout_session(checkout_id)
    state = _return(client, checkout_id).json
    assert (state["status"], state["payment_status"]) == ("complete", "paid")
    assert state["enrollment"]["course_code"] == "SFZ" and state["enrollment"]["status"] == "active"
    assert state["enrollment"]["student_id"] == "stu_1"
    assert state["credits_granted"] == {"group": 1, "private": 2}
    assert _return(client, checkout_id).json == state  # again: nothing new
    body = json.dumps(stripe_server.event("checkout.session.completed", paid))
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    drain(runtime)
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StudentCourseEnrollment)) == 1
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.topic == "enrollment.created")) == 1
        statuses = sorted(r.status.value for r in s.scalars(select(InboxEvent)))
    assert statuses == ["processed", "processed"]  # the return, then the webhook as a no-op
    assert 409 == _buy(client).status_code  # now held: not sold twice
    assert _buy(client).json["error"]["code"] == "already_enrolled"


@pytest.mark.parametrize("code", [{"course_code": "SFZ"}, {"course_code": None, "package_code": "TEN"}],
                         ids=["course", "package"])
def test_a_bank_debit_settled_before_its_webhook_is_fulfilled_by_the_return_once(client, runtime, worker, on_sale,
                                                                                 stripe_server, code):
    """The checkout completed unpaid (a bank debit: a pending purchase); Stripe says paid before its
    async_payment_succeeded webhook came. Before: the return answered paid with the enrollment pending and no
    credits, though the docs promise a paid session is never 'not yet'. The webhook, when it comes, adds nothing."""
    checkout_id = _buy(client, **code).json["id"]
    pending = stripe_server.complete_checkout_session(checkout_id, paid=False)
    body = json.dumps(stripe_server.event("checkout.session.completed", pending))
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    drain(runtime)
    assert _return(client, checkout_id).json["credits_granted"] is None
    stripe_server.checkout_sessions[checkout_id]["payment_status"] = "paid"  # settled; its webhook not in yet
    state = _return(client, checkout_id).json
    assert state["payment_status"] == "paid" and state["credits_granted"] is not None
    if state["enrollment"] is not None:
        assert state["enrollment"]["status"] == "active"
    assert _return(client, checkout_id).json == state
    settled = json.dumps(stripe_server.event("checkout.session.async_payment_succeeded",
                                             stripe_server.checkout_sessions[checkout_id]))
    assert client.post("/webhooks/stripe", data=settled, headers=stripe_headers(settled)).status_code == 200
    drain(runtime)
    assert _return(client, checkout_id).json == state
    with runtime.db.session_scope() as s:
        assert {r.status.value for r in s.scalars(select(InboxEvent))} == {"processed"}


def test_a_checkout_paid_after_its_course_was_deleted_and_made_again_buys_the_course_it_was_opened_for(
        client, admin_headers, runtime, worker, on_sale, stripe_server):
    """A checkout opened for SFZ; the admin deletes SFZ and makes a new SFZ (other steps, other bundle); the buyer
    then pays the old session. Before, the webhook and the return enrolled the buyer in the new course."""
    checkout_id = _buy(client).json["id"]
    with runtime.db.session_scope() as s:
        sold_id = catalog.get_program(s, "SFZ").id
    assert client.delete("/admin/courses/SFZ", headers=admin_headers).status_code == 200
    remade = course(steps=[{"label": "NEW-1", "title": "Another start", "options": []}],
                    bundle=[{"kind": "group_credit", "quantity": 4}])
    assert client.put("/admin/courses/SFZ", json=remade, headers=admin_headers).status_code == 201
    publish_calls.publish(publishing.COURSE, "SFZ", unit_of_work=runtime.db.session_scope, settings=runtime.settings)
    paid = stripe_server.complete_checkout_session(checkout_id)
    body = json.dumps(stripe_server.event("checkout.session.completed", paid))
    assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
    drain(runtime)
    state = _return(client, checkout_id).json
    assert state["enrollment"]["status"] == "active"
    assert state["credits_granted"] == {"group": 1, "private": 2}  # the deleted course's bundle, as it was sold
    with runtime.db.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert enrollment.program_id == sold_id != catalog.get_program(s, "SFZ").id
        assert enrollment.stripe_price_id == on_sale["SFZ"]
    # the new course sells itself: a checkout opened now names it, and buys it
    again = _buy(client, student_id="stu_2").json["id"]
    stripe_server.complete_checkout_session(again)
    assert _return(client, again).json["credits_granted"] == {"group": 4}


def test_a_checkout_paid_after_a_price_change_records_the_price_it_charged(
        client, admin_headers, runtime, worker, on_sale, stripe_server):
    """A checkout opened at 120.00; the studio raises the price (a new Stripe price) before the buyer pays. The
    enrollment recorded the new price's id beside the old amount paid."""
    checkout_id = _buy(client).json["id"]
    raised = course(price={"amount": 15000, "currency": "eur"})
    assert client.put("/admin/courses/SFZ", json=raised, headers=admin_headers).status_code == 200
    publish_calls.publish(publishing.COURSE, "SFZ", unit_of_work=runtime.db.session_scope, settings=runtime.settings)
    with runtime.db.session_scope() as s:
        new_price = catalog.get_program(s, "SFZ").stripe_price_id
    assert new_price != on_sale["SFZ"]
    paid = stripe_server.complete_checkout_session(checkout_id)
    for _ in range(2):  # Stripe delivers it twice (a new event id each time): one enrollment, at the price paid
        body = json.dumps(stripe_server.event("checkout.session.completed", paid))
        assert client.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code == 200
        drain(runtime)
    with runtime.db.session_scope() as s:
        (enrollment,) = s.scalars(select(StudentCourseEnrollment)).all()
        assert (enrollment.stripe_price_id, enrollment.amount_total) == (on_sale["SFZ"], 12000)
    # a session opened now charges, and records, the new price
    again = _buy(client, student_id="stu_2").json["id"]
    stripe_server.complete_checkout_session(again)
    assert _return(client, again).json["enrollment"]["status"] == "active"
    with runtime.db.session_scope() as s:
        second = s.scalar(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == "stu_2"))
        assert (second.stripe_price_id, second.amount_total) == (new_price, 15000)


def test_return_of_a_package_purchase_reports_the_credits(client, on_sale, stripe_server):
    checkout_id = client.post("/v1/checkout-sessions", headers=READ,
                              json={"student_id": "stu_2", "package_code": "TEN", **URLS}).json["id"]
    stripe_server.complete_checkout_session(checkout_id)
    state = _return(client, checkout_id).json
    assert state["enrollment"] is None and state["credits_granted"] == {"group": 10}


def test_return_of_an_unknown_session_is_404(client, on_sale):
    assert _return(client, "cs_test_unknown").status_code == 404
    assert _return(client, "not-a-session").status_code == 404


def test_return_and_webhook_at_the_same_moment_make_one_enrollment(app, runtime, worker, on_sale, stripe_server):
    client = app.test_client()
    checkout_id = _buy(client).json["id"]
    paid = stripe_server.complete_checkout_session(checkout_id)
    body = json.dumps(stripe_server.event("checkout.session.completed", paid))
    start = threading.Barrier(2)
    answers = {}

    def webhook():
        c = app.test_client()
        start.wait()
        answers["webhook"] = c.post("/webhooks/stripe", data=body, headers=stripe_headers(body)).status_code

    def landing():
        c = app.test_client()
        start.wait()
        answers["landing"] = _return(c, checkout_id)

    threads = [threading.Thread(target=webhook), threading.Thread(target=landing)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    drain(runtime)
    assert answers["webhook"] == 200 and answers["landing"].status_code == 200
    with runtime.db.session_scope() as s:
        enrollments = s.scalars(select(StudentCourseEnrollment)).all()
        assert len(enrollments) == 1 and enrollments[0].status.value == "active"
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.topic == "enrollment.created")) == 1
        assert s.scalar(select(func.count()).select_from(PackagePurchase)) == 0
        assert all(r.status.value == "processed" for r in s.scalars(select(InboxEvent)))
    # whoever won, the page shows the enrollment
    assert _return(client, checkout_id).json["enrollment"]["id"] == enrollments[0].id


def test_credits_granted_are_the_purchase_s_own_after_a_revocation_and_a_reinstatement(client, runtime, on_sale,
                                                                                        stripe_server, admin_headers):
    """Before: the lots a reinstatement gave back were added to the purchase's, so the session answered twice the
    bundle (the balance was right)."""
    checkout_id = _buy(client).json["id"]
    stripe_server.complete_checkout_session(checkout_id)
    state = _return(client, checkout_id).json
    assert state["credits_granted"] == {"group": 1, "private": 2}
    for move in ("revoke", "reinstate"):
        answer = client.post(f"/admin/enrollments/{state['enrollment']['id']}/{move}", json={"reason": "by mistake"},
                             headers=admin_headers)
        assert answer.status_code == 200, answer.json
    assert _return(client, checkout_id).json["credits_granted"] == {"group": 1, "private": 2}
    assert client.get("/v1/students/stu_1/credits", headers=READ).json["balances"] == {"group": 1, "private": 2}


def test_after_going_live_what_was_published_with_the_test_key_is_not_on_sale_until_published_again(
        client, runtime, database, on_sale):
    """Before: the test mode's prices were still listed and sold, and a checkout named a price the live mode does
    not have (Stripe refused it: a 502)."""
    from tests.stripe_server import StripeServer

    live = StripeServer(api_key="sk_live_local_stripe_server").start()
    try:
        runtime.settings = make_settings(database.url, read_api_tokens=("selling-reader-0123456789abcdef",),
                                         **live.settings_changes())
        assert client.get("/v1/packages", headers=READ).json["packages"] == []
        assert client.get("/v1/packages/TEN", headers=READ).status_code == 404
        for code in ({"course_code": "SFZ"}, {"course_code": None, "package_code": "TEN"}):
            refused = _buy(client, **code)
            assert refused.status_code == 404 and "publish it again" in refused.json["error"]["message"]
        assert live.calls("POST", "/v1/checkout/sessions") == []
        publish_calls.publish(publishing.PACKAGE, "TEN", unit_of_work=runtime.db.session_scope,
                              settings=runtime.settings)
        [listed] = client.get("/v1/packages", headers=READ).json["packages"]
        assert listed["price"]["stripe_price_id"] in live.prices
        assert _buy(client, course_code=None, package_code="TEN").status_code == 201
    finally:
        live.stop()


def test_a_failure_stripe_keeps_under_the_key_is_made_again_under_a_fresh_one_the_idempotency_key_then_names(
        client, on_sale, stripe_server):
    """Stripe saved a 500 under the key sent and replays it to every retry with it for 24 hours. Before: every
    request with that Idempotency-Key answered 502 until the next day."""
    stripe_server.fail_next("POST", "/v1/checkout/sessions", status=500, saved=True)
    first = _buy(client, headers={**READ, "Idempotency-Key": "order-5xx"})
    assert first.status_code == 201, first.json
    again = _buy(client, headers={**READ, "Idempotency-Key": "order-5xx"})
    assert again.status_code == 201 and again.json["id"] == first.json["id"]
    keys = [call.idempotency_key for call in stripe_server.calls("POST", "/v1/checkout/sessions")]
    assert len(set(keys)) == 2 and keys[-1] == keys[-2]  # the failed key, then the fresh one, kept
