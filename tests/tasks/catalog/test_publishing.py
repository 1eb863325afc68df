"""Publishing to Stripe with the real `stripe` client against the local Stripe server: what Stripe
receives (form fields, metadata, Idempotency-Key), crash-and-retry, price and title changes, failures."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from db.enums import ProgramStatus
from db.models import StripePublication
from tests import inbox_api as inbox
from tasks.catalog import services as catalog
from tasks.catalog import publishing
from workers import publishing as publish_calls
from tasks.errors import PermanentError
from tasks.stripe_api import StripeNotConfigured
from tests.conftest import make_settings
from tests.tasks.catalog.test_catalog import course, save


@pytest.fixture
def stripe_settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def publish(database, settings, code="SFZ", kind=publishing.COURSE) -> publishing.Published:
    return publish_calls.publish(kind, code, unit_of_work=database.session_scope, settings=settings)


def program_state(database, code="SFZ"):
    with database.session_scope() as s:
        p = catalog.get_program(s, code)
        return p.id, p.status, p.stripe_product_id, p.stripe_price_id


def publications(database) -> list[tuple]:
    with database.session_scope() as s:
        return [(r.object_type, r.request["action"], r.status.value, r.idempotency_key)
                for r in s.scalars(select(StripePublication).order_by(StripePublication.id))]


def test_first_publish_creates_product_and_price_with_metadata_and_keys(database, stripe_server, stripe_settings):
    save(database, course())
    result = publish(database, stripe_settings)

    program_id, status, product_id, price_id = program_state(database)
    assert status is ProgramStatus.PUBLISHED
    assert (result.product_id, result.price_id) == (product_id, price_id)
    assert list(stripe_server.products) == [product_id] and list(stripe_server.prices) == [price_id]
    product_call, price_call = stripe_server.calls("POST")
    assert product_call.path == "/v1/products"
    assert product_call.form["name"] == "Sforzando: accents in ensemble playing"
    assert product_call.form["description"] == "Three sessions."
    assert product_call.form["metadata[course_code]"] == "SFZ"
    assert product_call.form["metadata[kind]"] == "course"
    assert product_call.form["metadata[bundle]"] == "private_credit:2,group_credit:1"
    assert re.fullmatch(f"coursepipe:course:{program_id}:1:product-create:[0-9a-f]{{32}}", product_call.idempotency_key)
    assert price_call.path == "/v1/prices"
    assert price_call.form == {"product": product_id, "currency": "eur", "unit_amount": "12000",
                               "metadata[kind]": "course", "metadata[course_code]": "SFZ",
                               "metadata[bundle]": "private_credit:2,group_credit:1"}
    assert re.fullmatch(f"coursepipe:course:{program_id}:2:price-create:[0-9a-f]{{32}}", price_call.idempotency_key)
    assert stripe_server.prices[price_id]["unit_amount"] == 12000

    # published and in line: publishing again asks Stripe nothing
    again = publish(database, stripe_settings)
    assert again.calls == [] and len(stripe_server.calls("POST")) == 2
    with database.session_scope() as s:
        assert publishing.stripe_state(s, "course", catalog.get_program(s, "SFZ"))["in_sync"] is True


@pytest.mark.parametrize("crash_on", ["product", "price"])
def test_publish_interrupted_after_stripe_answered_then_retried_leaves_one_product_and_one_price(
        database, stripe_server, stripe_settings, monkeypatch, crash_on):
    save(database, course())
    real = publishing.record_outcome

    def crash_once(*, session, intent, **kw):
        if intent.object_type == crash_on and not crashed:
            crashed.append(intent.idempotency_key)
            raise ConnectionError("process died before committing the outcome")
        return real(session=session, intent=intent, **kw)

    crashed: list[str] = []
    monkeypatch.setattr(publishing, "record_outcome", crash_once)
    with pytest.raises(ConnectionError):
        publish(database, stripe_settings)
    assert program_state(database)[1] is ProgramStatus.DRAFT
    assert [p[2] for p in publications(database)][-1] == "pending"

    publish(database, stripe_settings)  # the retry

    _, status, product_id, price_id = program_state(database)
    assert status is ProgramStatus.PUBLISHED
    assert list(stripe_server.products) == [product_id]
    assert list(stripe_server.prices) == [price_id]
    replayed = [c for c in stripe_server.calls("POST") if c.replayed]
    assert [c.idempotency_key for c in replayed] == crashed
    assert [p[2] for p in publications(database)] == ["succeeded", "succeeded"]


def test_price_change_creates_a_new_price_and_archives_the_old_one(database, stripe_server, stripe_settings):
    save(database, course())
    publish(database, stripe_settings)
    _, _, product_id, old_price = program_state(database)
    data = course()
    data["price"] = {"amount": 15000, "currency": "eur"}
    save(database, data)
    with database.session_scope() as s:
        assert publishing.stripe_state(s, "course", catalog.get_program(s, "SFZ"))["in_sync"] is False

    result = publish(database, stripe_settings)

    _, _, same_product, new_price = program_state(database)
    assert same_product == product_id and new_price != old_price
    assert [(c["object_type"], c["action"]) for c in result.calls] == [("price", "create"), ("price", "archive")]
    assert stripe_server.prices[new_price]["unit_amount"] == 15000 and stripe_server.prices[new_price]["active"]
    assert stripe_server.prices[old_price]["active"] is False
    archive = stripe_server.calls("POST", f"/v1/prices/{old_price}")[0]
    assert archive.form == {"active": "false"}
    assert not stripe_server.calls("POST", f"/v1/products/{product_id}")  # the product did not change


def test_title_change_updates_the_product_and_keeps_the_price(database, stripe_server, stripe_settings):
    save(database, course())
    publish(database, stripe_settings)
    _, _, product_id, price_id = program_state(database)
    save(database, course(title="Sforzando II"))
    result = publish(database, stripe_settings)
    assert [(c["object_type"], c["action"]) for c in result.calls] == [("product", "update")]
    update = stripe_server.calls("POST", f"/v1/products/{product_id}")[0]
    assert update.form["name"] == "Sforzando II" and update.form["metadata[course_code]"] == "SFZ"
    assert stripe_server.products[product_id]["name"] == "Sforzando II"
    assert program_state(database)[3] == price_id and len(stripe_server.prices) == 1


def test_bundle_change_updates_product_and_price_metadata(database, stripe_server, stripe_settings):
    save(database, course())
    publish(database, stripe_settings)
    _, _, product_id, price_id = program_state(database)
    save(database, course(bundle=[{"kind": "group_credit", "quantity": 4}]))
    result = publish(database, stripe_settings)
    assert [(c["object_type"], c["action"]) for c in result.calls] == [("product", "update"), ("price", "update")]
    assert stripe_server.products[product_id]["metadata"]["bundle"] == "group_credit:4"
    assert stripe_server.prices[price_id]["metadata"]["bundle"] == "group_credit:4"
    assert len(stripe_server.prices) == 1


def test_without_api_key_publishing_fails_clearly_and_the_course_stays_draft(database, stripe_server):
    save(database, course())
    with pytest.raises(StripeNotConfigured, match="STRIPE_API_KEY is not set: publishing to Stripe is disabled"):
        publish(database, make_settings(database.url, stripe_api_base=stripe_server.url))
    assert program_state(database)[1] is ProgramStatus.DRAFT
    assert publications(database) == [] and stripe_server.requests == []


def test_stripe_refusal_is_permanent_and_a_later_publish_starts_afresh(database, stripe_server, stripe_settings):
    save(database, course())
    stripe_server.fail_next("POST", r"/v1/products", status=400,
                            body={"error": {"type": "invalid_request_error", "message": "Name too long"}})
    with pytest.raises(publishing.PublishFailed, match="Name too long"):
        publish(database, stripe_settings)
    assert program_state(database)[1] is ProgramStatus.DRAFT
    with database.session_scope() as s:
        state = publishing.stripe_state(s, "course", catalog.get_program(s, "SFZ"))
    assert "Name too long" in state["last_error"] and state["in_sync"] is False
    publish(database, stripe_settings)
    assert [p[2] for p in publications(database)] == ["failed", "succeeded", "succeeded"]
    keys = [c.idempotency_key for c in stripe_server.calls("POST", "/v1/products")]
    assert keys[0] != keys[1]  # a refused request is not replayed: a fresh intent, a fresh key
    assert program_state(database)[1] is ProgramStatus.PUBLISHED


def test_stripe_outage_keeps_the_intent_and_the_retry_reuses_its_key(database, stripe_server, stripe_settings):
    save(database, course())
    stripe_server.fail_next("POST", r"/v1/prices", status=503, times=2)  # the client retries once itself
    with pytest.raises(publishing.PublishRetry):
        publish(database, stripe_settings)
    assert not issubclass(publishing.PublishRetry, PermanentError)  # the actor retries it
    assert publications(database)[-1][2] == "pending"
    publish(database, stripe_settings)
    price_keys = {c.idempotency_key for c in stripe_server.calls("POST", "/v1/prices")}
    assert len(price_keys) == 1 and len(stripe_server.prices) == 1
    assert [p[2] for p in publications(database)] == ["succeeded", "succeeded"]


def test_a_5xx_stripe_saved_under_the_key_ends_the_intent_and_a_new_publish_uses_a_new_key(
        database, stripe_server, stripe_settings):
    """Stripe saves an error that came once the call had begun and replays it to that key for 24 hours: the
    intent ends failed with the reason, instead of replaying a dead key, and publishing again plans afresh."""
    save(database, course())
    stripe_server.fail_next("POST", r"/v1/prices", status=500, saved=True)
    with pytest.raises(publishing.PublishFailed):
        publish(database, stripe_settings)
    with database.session_scope() as s:
        state = publishing.stripe_state(s, "course", catalog.get_program(s, "SFZ"))
    assert "publish again" in state["last_error"]
    publish(database, stripe_settings)
    assert [p[2] for p in publications(database)] == ["succeeded", "failed", "succeeded"]
    keys = [c.idempotency_key for c in stripe_server.calls("POST", "/v1/prices")]
    assert keys[0] == keys[1] != keys[2] and len(stripe_server.prices) == 1
    assert program_state(database)[1] is ProgramStatus.PUBLISHED


def test_package_publishes_with_package_metadata(database, stripe_server, stripe_settings):
    data = {"title": "Ten group classes", "price": {"amount": 9000, "currency": "usd"},
            "credits": {"kind": "group", "quantity": 10}}
    with database.session_scope() as s:
        catalog.save_package(session=s, package=catalog.parse_package(data, code="TEN"))
    result = publish(database, stripe_settings, code="TEN", kind=publishing.PACKAGE)
    product_call = stripe_server.calls("POST", "/v1/products")[0]
    assert product_call.metadata == {"kind": "package", "package_code": "TEN", "credits": "group_credit:10"}
    with database.session_scope() as s:
        package = catalog.get_package(s, "TEN")
        assert (package.stripe_product_id, package.stripe_price_id) == (result.product_id, result.price_id)


def test_package_linked_to_a_hand_made_price_is_not_replaced(database, stripe_server, stripe_settings):
    data = {"title": "Five", "price": {"amount": 5000, "currency": "usd"},
            "credits": {"kind": "private", "quantity": 5}, "stripe_price_id": "price_handmade1"}
    with database.session_scope() as s:
        catalog.save_package(session=s, package=catalog.parse_package(data, code="FIVE"))
    with pytest.raises(publishing.PublishFailed, match="price_handmade1"):
        publish(database, stripe_settings, code="FIVE", kind=publishing.PACKAGE)
    assert stripe_server.requests == []


def test_deleted_course_cannot_be_published(database, stripe_server, stripe_settings):
    save(database, course())
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    with pytest.raises(PermanentError, match="does not exist"):
        publish(database, stripe_settings)
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StripePublication)) == 0


def test_concurrent_publishes_of_one_course_create_one_product_and_one_price(database, stripe_server,
                                                                              stripe_settings):
    """Four workers publish at once (a double click, a retry racing the first run); each retries on a
    transient error as the actor would. Stripe ends with one product and one price."""
    import threading

    from sqlalchemy.exc import DBAPIError

    save(database, course())
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker():
        start.wait()
        for _ in range(10):
            try:
                publish(database, stripe_settings)
                return
            except (publishing.PublishRetry, DBAPIError):
                continue  # the actor's retry
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return
        errors.append(AssertionError("did not converge"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    _, status, product_id, price_id = program_state(database)
    assert status is ProgramStatus.PUBLISHED
    assert list(stripe_server.products) == [product_id] and list(stripe_server.prices) == [price_id]


def _price_changed(database, stripe_settings) -> tuple[str, str]:
    """SFZ published, then re-priced and published again: (the archived price, the current one)."""
    save(database, course())
    old_price = publish(database, stripe_settings).price_id
    data = course()
    data["price"] = {"amount": 99, "currency": "eur"}
    save(database, data)
    return old_price, publish(database, stripe_settings).price_id


def test_an_archived_price_still_names_its_course(database, stripe_server, stripe_settings):
    old_price, new_price = _price_changed(database, stripe_settings)
    with database.session_scope() as s:
        assert publishing.listing_for_price(s, old_price).code == "SFZ"
        assert publishing.listing_for_price(s, new_price).code == "SFZ"
        assert publishing.listing_for_price(s, "price_unknown") is None


def test_a_checkout_opened_before_a_price_change_fulfils_its_course(database, stripe_server, stripe_settings):
    """A Payment Link checkout (no metadata) naming the archived price is still this course's purchase."""
    from tests.tasks.purchases.payments_support import checkout, deliver, state

    old_price, _ = _price_changed(database, stripe_settings)
    stripe_server.add_checkout_session(id="cs_old", amount_total=12000, line_items=[{"price": old_price, "quantity": 1}])
    assert deliver(database, checkout(cs="cs_old", pi="pi_old", metadata={}), stripe_settings).outcome \
        is inbox.Outcome.PROCESSED
    [enrollment] = state(database)["enrollments"]
    assert enrollment["session"] == "cs_old" and enrollment["status"] == "active"


def test_publishing_with_a_live_key_after_a_test_one_makes_the_live_product_and_price(database, stripe_server,
                                                                                    stripe_settings):
    """Before: the test mode's product and price, recorded as published, were taken as in line with the live key
    too: no call was made, the state said in sync, and every checkout named a price the live mode does not have.
    Now what the other mode made does not count: the live product and price are made, the listing names them,
    and a call left pending in the test mode is given up (its key belongs to that mode)."""
    from tests.stripe_server import StripeServer

    save(database, course())
    test_run = publish(database, stripe_settings)
    save(database, course(title="Salsa, renamed"))  # a change whose publish is interrupted in the test mode
    stripe_server.fail_next("POST", r"/v1/products/.+", status=503, times=2)
    with pytest.raises(publishing.PublishRetry):
        publish(database, stripe_settings)
    live = StripeServer(api_key="sk_live_local_stripe_server").start()
    try:
        live_settings = make_settings(database.url, **live.settings_changes())
        with database.session_scope() as s:
            program = catalog.get_program(s, "SFZ")
            assert publishing.stripe_state(s, "course", program, "test")["pending"] == 1
            assert publishing.stripe_state(s, "course", program, "live")["in_sync"] is False
        live_run = publish(database, live_settings)
        assert live_run.product_id in live.products and live_run.price_id in live.prices
        assert live.products[live_run.product_id]["name"] == "Salsa, renamed"
        assert (live_run.product_id, live_run.price_id) != (test_run.product_id, test_run.price_id)
        assert program_state(database)[2:] == (live_run.product_id, live_run.price_id)
        with database.session_scope() as s:
            rows = list(s.scalars(select(StripePublication).order_by(StripePublication.id)))
            assert [(r.request.get("mode"), r.status.value) for r in rows] == [
                ("test", "succeeded"), ("test", "succeeded"), ("test", "failed"),
                ("live", "succeeded"), ("live", "succeeded")]
            assert "the key is now live" in rows[2].last_error
            assert publishing.stripe_state(s, "course", catalog.get_program(s, "SFZ"), "live")["in_sync"] is True
        assert publish(database, live_settings).calls == []  # in line now
    finally:
        live.stop()


# --------------------------------------------------------------------------- a publish that stopped


def _stalled(database, settings, now):
    from tasks.stripe_api import key_mode

    with database.session_scope() as s:
        return publishing.stalled(session=s, mode=key_mode(settings.stripe_api_key), now=now)


def _resume(database, settings, now) -> int:
    """The publishing job's work, its messages handled at once by a publish."""
    return publish_calls.resume_stalled(unit_of_work=database.session_scope, settings=settings, now=now,
                                        send=lambda actor, kind, code: bool(publish(database, settings, code, kind)))


def test_a_publish_whose_message_was_lost_is_found_pending_and_finished_by_the_publishing_job(
        database, stripe_server, stripe_settings):
    """Before: answering 202 queued a message and recorded nothing; the message lost (the embedded broker holds
    it in memory: a restart; or its retries spent), the publish was never made and the course stayed a draft."""
    from db.types import utcnow

    save(database, course())
    sent = []
    assert publish_calls.request_publish(unit_of_work=database.session_scope, settings=stripe_settings,
                                         kind=publishing.COURSE, code="SFZ",
                                         send=lambda *message: sent.append(message) or True)
    assert sent == [("publish_listing", "course", "SFZ")]  # and then lost
    assert [p[:3] for p in publications(database)] == [("product", "create", "pending")]
    now = utcnow()
    assert _stalled(database, stripe_settings, now) == []  # under way: its worker's
    later = now + publishing.STALLED_AFTER
    assert _stalled(database, stripe_settings, later) == [("course", "SFZ")]
    assert _resume(database, stripe_settings, later) == 1
    assert program_state(database)[1] is ProgramStatus.PUBLISHED
    assert len(stripe_server.products) == 1 and len(stripe_server.prices) == 1
    assert _stalled(database, stripe_settings, later) == []
    assert _resume(database, stripe_settings, later) == 0


def test_a_publish_stopped_between_two_calls_is_finished_with_the_key_of_the_call_it_was_making(
        database, stripe_server, stripe_settings, monkeypatch):
    """The worker ends after Stripe made the product, before anything more is committed: the product's call is
    still pending (its outcome and the next call commit together), and the publish sent again replays its key."""
    from db.types import utcnow

    save(database, course())
    plan = publishing.next_intent
    planned = []

    def ending_at_the_second(**kwargs):
        planned.append(kwargs["code"])
        if len(planned) == 2:
            raise SystemExit("the worker ends")
        return plan(**kwargs)

    monkeypatch.setattr(publishing, "next_intent", ending_at_the_second)
    with pytest.raises(SystemExit):
        publish(database, stripe_settings)
    monkeypatch.setattr(publishing, "next_intent", plan)
    assert [p[:3] for p in publications(database)] == [("product", "create", "pending")]
    assert len(stripe_server.products) == 1
    assert _resume(database, stripe_settings, utcnow() + publishing.STALLED_AFTER) == 1
    assert len(stripe_server.products) == 1 and len(stripe_server.prices) == 1  # the product's key replayed
    assert [p[2] for p in publications(database)] == ["succeeded", "succeeded"]
    assert program_state(database)[1] is ProgramStatus.PUBLISHED


def test_a_stalled_call_of_a_deleted_course_of_the_other_mode_or_older_than_stripe_keeps_its_key_is_left_alone(database, stripe_server,
                                                                                stripe_settings):
    from db.types import utcnow

    save(database, course())
    save(database, course(), code="OLD")
    for code in ("SFZ", "OLD"):
        publish_calls.request_publish(unit_of_work=database.session_scope, settings=stripe_settings,
                                      kind=publishing.COURSE, code=code, send=lambda *message: True)
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="OLD")
    later = utcnow() + publishing.STALLED_AFTER
    assert _stalled(database, stripe_settings, later) == [("course", "SFZ")]
    with database.session_scope() as s:
        assert publishing.stalled(session=s, mode="live", now=later) == []
    # recorded longer ago than Stripe keeps its key: made again it could be made twice; the admin decides
    assert _stalled(database, stripe_settings, utcnow() + publishing.REPLAY_WITHIN) == []
