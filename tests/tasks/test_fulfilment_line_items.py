"""A checkout without metadata is identified by its line items, fetched with the real `stripe` client
from a local HTTP server that answers like Stripe's GET /v1/checkout/sessions/<id>/line_items."""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from db.enums import BundleKind, CreditType, InboxStatus
from db.models import CreditPackage, StudentCourseEnrollment
from tasks import credits, inbox
from tests import factories
from tests.conftest import make_settings
from tests.tasks.payments_support import checkout, deliver, inbox_row, state


class LineItems:
    """Line items per session id; `fail` makes every answer a 500 (Stripe having a bad day)."""

    def __init__(self) -> None:
        self.items: dict[str, list[dict]] = {}
        self.requests: list[dict] = []
        self.fail = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append({"path": path, "auth": self.headers.get("Authorization")})
                parts = path.strip("/").split("/")
                if server.fail:
                    return self._json(500, {"error": {"type": "api_error", "message": "boom"}})
                if len(parts) != 5 or parts[:3] != ["v1", "checkout", "sessions"] or parts[4] != "line_items" \
                        or parts[3] not in server.items:
                    return self._json(404, {"error": {"type": "invalid_request_error",
                                                      "message": f"No such checkout.session: '{parts[3:4]}'"}})
                self._json(200, {"object": "list", "data": server.items[parts[3]], "has_more": False, "url": path})

            def _json(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:12]}")
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def sell(self, session_id: str, price_id: str, product_id: str, amount: int) -> None:
        self.items[session_id] = [{
            "id": f"li_{uuid.uuid4().hex[:12]}", "object": "item", "amount_subtotal": amount, "amount_total": amount,
            "currency": "usd", "description": "course", "quantity": 1,
            "price": {"id": price_id, "object": "price", "product": product_id, "unit_amount": amount,
                      "currency": "usd", "type": "one_time", "active": True},
        }]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def line_items():
    server = LineItems()
    yield server
    server.stop()


@pytest.fixture
def stripe_settings(database, line_items):
    return make_settings(database.url, stripe_api_key="sk_test_line_items", stripe_api_base=line_items.url)


def _bare_checkout(cs: str, pi: str, amount: int = 12000) -> dict:
    return checkout(cs=cs, pi=pi, amount=amount, metadata={})


def test_course_identified_by_its_price(database, line_items, stripe_settings):
    with database.session_scope() as s:
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        program.stripe_product_id, program.stripe_price_id = "prod_sfz", "price_sfz"
    line_items.sell("cs_li", "price_sfz", "prod_sfz", 12000)
    assert deliver(database, _bare_checkout("cs_li", "pi_li"), stripe_settings).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment))
        assert (enrollment.stripe_price_id, enrollment.stripe_product_id) == ("price_sfz", "prod_sfz")
        assert enrollment.fulfilment_metadata["identified_by"] == "line_items"
    assert line_items.requests == [{"path": "/v1/checkout/sessions/cs_li/line_items",
                                    "auth": "Bearer sk_test_line_items"}]
    assert state(database)["enrollments"][0]["lots"] == [("private", 2, 2)]


def test_package_identified_by_its_price(database, line_items, stripe_settings):
    with database.session_scope() as s:
        s.add(CreditPackage(code="P3", title="Three", price_amount=3000, credit_type=CreditType.PRIVATE, quantity=3,
                            stripe_price_id="price_p3"))
    line_items.sell("cs_pk", "price_p3", "prod_p3", 3000)
    deliver(database, _bare_checkout("cs_pk", "pi_pk", 3000), stripe_settings)
    with database.session_scope() as s:
        assert credits.balances(session=s, student_id="stu_1") == {"group": 0, "private": 3}


def test_unknown_price_fails_visibly(database, line_items, stripe_settings):
    line_items.sell("cs_other", "price_elsewhere", "prod_x", 500)
    event = _bare_checkout("cs_other", "pi_other", 500)
    result = deliver(database, event, stripe_settings)
    assert result.outcome is inbox.Outcome.FAILED and "price_elsewhere" in result.error
    assert inbox_row(database, event).status == InboxStatus.FAILED


def test_stripe_unavailable_is_retried_and_no_api_key_is_permanent(database, line_items, stripe_settings):
    with database.session_scope() as s:
        program = factories.program(s)
        program.stripe_price_id = "price_sfz"
    line_items.sell("cs_flaky", "price_sfz", "prod_sfz", 12000)
    line_items.fail = True
    event = _bare_checkout("cs_flaky", "pi_flaky")
    assert deliver(database, event, stripe_settings).outcome is inbox.Outcome.RETRY
    line_items.fail = False
    with database.session_scope() as s:
        result = inbox.process_event(session=s, inbox_id=inbox_row(database, event).id, settings=stripe_settings)
    assert result.outcome is inbox.Outcome.PROCESSED
    no_key = _bare_checkout("cs_nokey", "pi_nokey")
    result = deliver(database, no_key, make_settings(database.url))
    assert result.outcome is inbox.Outcome.FAILED and "STRIPE_API_KEY" in result.error
