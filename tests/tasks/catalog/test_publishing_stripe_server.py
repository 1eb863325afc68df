"""The local Stripe server itself, driven by the real `stripe` client: shapes, recording, idempotency,
lists, extension routes. Other test modules rely on these behaviours."""
from __future__ import annotations

import pytest
import stripe

from coursepipe.settings import Settings
from tasks.stripe_api import StripeNotConfigured, stripe_client


def test_product_and_price_round_trip_records_form_fields_metadata_and_key(stripe_server):
    client = stripe_client(Settings(**stripe_server.settings_changes()))
    product = client.v1.products.create(
        params={"name": "Sforzando", "metadata": {"course_code": "SFZ", "bundle": "private_credit:2"}},
        options={"idempotency_key": "course:SFZ:product"})
    price = client.v1.prices.create(
        params={"product": product.id, "currency": "eur", "unit_amount": 12000, "metadata": {"course_code": "SFZ"}},
        options={"idempotency_key": "course:SFZ:price:1"})

    assert product.object == "product" and product.name == "Sforzando"
    assert product.metadata["course_code"] == "SFZ"
    assert price.object == "price" and price.unit_amount == 12000 and price.type == "one_time"
    assert price.product == product.id and price.currency == "eur"
    create = stripe_server.calls("POST", "/v1/products")[0]
    assert create.form["metadata[course_code]"] == "SFZ"
    assert create.metadata == {"course_code": "SFZ", "bundle": "private_credit:2"}
    assert create.idempotency_key == "course:SFZ:product"
    assert stripe_server.calls("POST", "/v1/prices")[0].form["unit_amount"] == "12000"
    assert client.v1.prices.retrieve(price.id).unit_amount == 12000


def test_same_idempotency_key_replays_the_first_answer_and_creates_nothing_twice(stripe_server):
    client = stripe_server.client()
    first = client.v1.products.create(params={"name": "A"}, options={"idempotency_key": "k1"})
    again = client.v1.products.create(params={"name": "A"}, options={"idempotency_key": "k1"})
    assert again.id == first.id
    assert len(stripe_server.products) == 1
    assert [c.replayed for c in stripe_server.calls("POST", "/v1/products")] == [False, True]
    with pytest.raises(stripe.IdempotencyError):
        client.v1.products.create(params={"name": "B"}, options={"idempotency_key": "k1"})


def test_price_is_immutable_but_can_be_archived_and_product_updated(stripe_server):
    client = stripe_server.client()
    product = client.v1.products.create(params={"name": "Old"})
    price = client.v1.prices.create(params={"product": product.id, "currency": "usd", "unit_amount": 100})
    assert client.v1.prices.update(price.id, params={"active": False}).active is False
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.prices.update(price.id, params={"unit_amount": 5})  # type: ignore[typeddict-unknown-key]
    assert client.v1.products.update(product.id, params={"name": "New"}).name == "New"
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.products.retrieve("prod_nope")
    assert missing.value.code == "resource_missing"


def test_checkout_session_list_filters_and_paginates_like_stripe(stripe_server):
    for n in range(5):
        stripe_server.add_checkout_session(created=1000 + n, status="complete" if n % 2 == 0 else "open")
    client = stripe_server.client()
    page = client.v1.checkout.sessions.list(params={"created": {"gte": 1001}, "status": "complete", "limit": 1})
    assert [s.created for s in page.data] == [1004] and page.has_more
    rest = client.v1.checkout.sessions.list(params={"created": {"gte": 1001}, "status": "complete", "limit": 1,
                                                   "starting_after": page.data[0].id})
    assert [s.created for s in rest.data] == [1002] and not rest.has_more
    assert [s.created for s in client.v1.checkout.sessions.list(params={"limit": 10}).auto_paging_iter()] == \
        [1004, 1003, 1002, 1001, 1000]


def test_line_items_of_a_seeded_or_created_session(stripe_server):
    client = stripe_server.client()
    price = stripe_server.add_price(unit_amount=4200, currency="eur", product="prod_x")
    seeded = stripe_server.add_checkout_session(line_items=[{"price": price["id"], "quantity": 2}])
    items = client.v1.checkout.sessions.line_items.list(seeded["id"])
    assert items.data[0].price.id == price["id"] and items.data[0].amount_total == 8400
    created = client.v1.checkout.sessions.create(params={
        "mode": "payment", "success_url": "https://example.com/ok", "client_reference_id": "stu_1",
        "line_items": [{"price": price["id"], "quantity": 1}], "metadata": {"kind": "course", "course_code": "SFZ"}})
    assert created.status == "open" and created.metadata["course_code"] == "SFZ"
    form = stripe_server.calls("POST", "/v1/checkout/sessions")[0].form
    assert form["line_items[0][price]"] == price["id"]
    assert stripe_server.calls("POST", "/v1/checkout/sessions")[0].params["line_items"] == \
        [{"price": price["id"], "quantity": "1"}]


def test_routes_registered_by_a_test_take_precedence_and_failures_can_be_injected(stripe_server):
    @stripe_server.route("GET", r"/v1/products/(?P<id>[^/]+)")
    def custom(request, id):
        return {"id": id, "object": "product", "name": "from a test", "metadata": {}}

    client = stripe_server.client()
    assert client.v1.products.retrieve("prod_custom").name == "from a test"
    stripe_server.fail_next("POST", r"/v1/products", status=500)
    with pytest.raises(stripe.APIError):
        client.v1.products.create(params={"name": "X"}, options={"idempotency_key": "once"})
    # a 5xx is not saved under the key: the retry with the same key creates the product
    assert client.v1.products.create(params={"name": "X"}, options={"idempotency_key": "once"}).name == "X"
    with pytest.raises(stripe.AuthenticationError):
        stripe_server.client(api_key="sk_test_wrong").v1.products.list()


def test_refund_create_and_retrieve(stripe_server):
    client = stripe_server.client()
    refund = client.v1.refunds.create(params={"charge": "ch_1", "amount": 500})
    assert refund.object == "refund" and refund.amount == 500
    assert client.v1.refunds.retrieve(refund.id).charge == "ch_1"


def test_client_without_key_is_a_clear_error():
    with pytest.raises(StripeNotConfigured, match="STRIPE_API_KEY is not set: publishing is disabled"):
        stripe_client(Settings(), purpose="publishing is disabled")
