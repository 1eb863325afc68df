"""A local Stripe API over real HTTP, for the real `stripe` client (point it here with STRIPE_API_BASE).

It answers in Stripe's documented shapes (objects start from tests/fixtures/stripe/api/fixtures3.json),
keeps what it created in memory, records every request, and honours `Idempotency-Key` the way Stripe
does: the same key with the same parameters replays the first answer (`Idempotent-Replayed: true`);
the same key with other parameters is a 400 `idempotency_error`.

Built in: products and prices (create, retrieve, update, list), checkout sessions (create, retrieve,
list with `created[...]`/`status`/`payment_intent`/`limit`/`starting_after`/`ending_before`, line items; a
created one is paid with `complete_checkout_session(id)`), refunds, payment intents and charges
(retrieve), disputes (retrieve; update with `evidence[...]` and `submit`, checked field by field, and
submitted once: a second submission is refused), events
(retrieve; list with `type`/`types[]`, `created[...]`, `delivery_success` and the list cursors), webhook
endpoints (list, retrieve); `event(type, obj)` wraps an object as an event.
Extend it from a test module:

    @stripe_server.route("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)/line_items")
    def line_items(request, id):
        return stripe_server.list_response(my_items[id], request, f"/v1/checkout/sessions/{id}/line_items")

A handler takes the `StripeRequest` and the pattern's named groups and returns a dict (200) or
`(status, dict)`; raise `StripeServer.error(...)` for Stripe-shaped errors. Routes added later win.
Seed objects with `add_product`, `add_price`, `add_checkout_session(obj, line_items=[...])`, `add_refund`,
`add_payment_intent`, `add_charge`, `add_dispute`, `add_event(event, delivered=…)`, `add_webhook_endpoint`.
`add_payment_intent(id=…, amount=…)` (a refund against a seeded one is at most what is left on it, all of
it when `amount` is left out, in its currency and naming its charge).
Fail the next matching request(s) with `fail_next("POST", "/v1/products", status=500)`.

It checks what it receives: the secret key (401 otherwise) and the pinned API version — a request whose
`Stripe-Version` is not `api_version` (by default `tasks.stripe_api.STRIPE_API_VERSION`) is a 400.
"""
from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import pytest

from tasks.stripe_api import STRIPE_API_VERSION

API_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe" / "api" / "fixtures3.json"
TEST_API_KEY = "sk_test_local_stripe_server"
_TEMPLATES: dict[str, Any] = {}


def template(resource: str) -> dict:
    """A fresh copy of the documented example object of one resource (e.g. "product", "checkout.session")."""
    if not _TEMPLATES:
        _TEMPLATES.update(json.loads(API_FIXTURES.read_text())["resources"])
    return copy.deepcopy(_TEMPLATES[resource])


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket encoding back into nested values: `metadata[a]=1` → {"metadata": {"a": "1"}},
    `line_items[0][price]=p` → {"line_items": [{"price": "p"}]}, `expand[]=x` → {"expand": ["x"]}.
    Leaves are strings, as Stripe receives them."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + (re.findall(r"([^\[\]]*)\]", "[" + rest) if rest else [])
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # `a[]` appends
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    node = {k: _listify(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
        return [node[k] for k in sorted(node, key=int)]
    return node


@dataclass
class StripeRequest:
    """One request as the server saw it. `form` is flat (`metadata[course_code]` keys), `params` nested."""

    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    params: dict[str, Any]
    headers: dict[str, str]
    idempotency_key: str | None
    server: "StripeServer" = field(repr=False)
    status: int | None = None
    replayed: bool = False
    uploads: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # multipart files: name -> (filename, bytes)

    @property
    def metadata(self) -> dict[str, str]:
        return self.params.get("metadata") or {}

    @property
    def values(self) -> dict[str, Any]:
        """Query parameters for GET/DELETE, form parameters for POST (nested)."""
        return self.params


class StripeError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(body["error"].get("message"))
        self.status, self.body = status, body


Handler = Callable[..., Any]


class StripeServer:
    def __init__(self, api_key: str = TEST_API_KEY, api_version: str | None = STRIPE_API_VERSION) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.lock = threading.RLock()
        self.requests: list[StripeRequest] = []
        self.products: dict[str, dict] = {}
        self.prices: dict[str, dict] = {}
        self.checkout_sessions: dict[str, dict] = {}
        self.line_items: dict[str, list[dict]] = {}
        self.refunds: dict[str, dict] = {}
        self.payment_intents: dict[str, dict] = {}
        self.charges: dict[str, dict] = {}
        self.disputes: dict[str, dict] = {}
        self.events: dict[str, dict] = {}
        self.delivered: dict[str, bool] = {}  # event id -> whether its webhook delivery succeeded
        self.webhook_endpoints: dict[str, dict] = {}
        self.files: dict[str, dict] = {}
        self.file_contents: dict[str, bytes] = {}
        self._idempotent: dict[str, tuple[tuple, int, dict]] = {}
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self._failures: list[dict] = []
        self._builtin_routes()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="stripe-server", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> "StripeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def client(self, api_key: str | None = None, **kwargs):
        """The real `stripe.StripeClient`, pointed here."""
        import stripe

        kwargs.setdefault("stripe_version", self.api_version or STRIPE_API_VERSION)
        return stripe.StripeClient(api_key or self.api_key, base_addresses={"api": self.url}, **kwargs)

    def settings_changes(self) -> dict[str, str]:
        """Keyword arguments for `Settings.with_(...)` / `make_settings(...)`: key and base address."""
        return {"stripe_api_key": self.api_key, "stripe_api_base": self.url}

    def settings_changes_env(self) -> dict[str, str]:
        """The same as environment variables, for a `coursepipe` subprocess."""
        return {"STRIPE_API_KEY": self.api_key, "STRIPE_API_BASE": self.url}

    # ---- extension -------------------------------------------------------------------------------

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Register `handler(request, **groups)` for METHOD and a full-match path regex (later wins)."""

        def register(handler: Handler) -> Handler:
            with self.lock:
                self._routes.insert(0, (method.upper(), re.compile(pattern), handler))
            return handler

        return register

    def fail_next(self, method: str, path_pattern: str, *, status: int = 500, times: int = 1,
                  body: dict | None = None, saved: bool = False, ran: bool = False) -> None:
        """Answer the next `times` matching requests with an error, before any handler runs (an outage in front
        of the API: nothing is saved under the request's idempotency key, a retry with it runs afresh).

        `saved`: the error came once the request's execution had begun, so Stripe saves it under the key and
        replays it (with `Idempotent-Replayed: true`) to every retry with that key for 24 hours. `ran`: the
        handler ran before the error (the object was made, the answer lost); implies `saved`."""
        body = body or {"error": {"type": "api_error", "message": "Injected failure"}}
        with self.lock:
            self._failures.append({"method": method.upper(), "pattern": re.compile(path_pattern),
                                   "status": status, "times": times, "body": body, "saved": saved or ran,
                                   "ran": ran})

    @staticmethod
    def error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
              param: str | None = None) -> StripeError:
        err: dict[str, Any] = {"type": type_, "message": message}
        if code:
            err["code"] = code
        if param:
            err["param"] = param
        return StripeError(status, {"error": err})

    @classmethod
    def missing(cls, resource: str, id_: str) -> StripeError:
        return cls.error(404, f"No such {resource}: '{id_}'", code="resource_missing", param="id")

    # ---- seeding and inspection ------------------------------------------------------------------

    def add_product(self, obj: dict | None = None, **changes) -> dict:
        product = template("product") | {"id": f"prod_{_rand(14)}", "created": int(time.time()),
                                         "updated": int(time.time()), "default_price": None,
                                         "package_dimensions": None, "description": None}
        product.update(obj or {})
        product.update(changes)
        with self.lock:
            self.products[product["id"]] = product
        return product

    def add_price(self, obj: dict | None = None, **changes) -> dict:
        price = template("price") | {"id": f"price_{_rand(24)}", "created": int(time.time()), "type": "one_time",
                                     "recurring": None, "transform_quantity": None, "custom_unit_amount": None}
        price.update(obj or {})
        price.update(changes)
        if "unit_amount" in price and price["unit_amount"] is not None:
            price["unit_amount_decimal"] = str(price["unit_amount"])
        with self.lock:
            self.prices[price["id"]] = price
        return price

    def add_checkout_session(self, obj: dict | None = None, *, line_items: list[dict] | None = None,
                             **changes) -> dict:
        """Seed a Checkout Session (fields over the documented example); `line_items` are items or
        `{"price": "price_…", "quantity": n}` shorthands."""
        session = template("checkout.session") | {"id": f"cs_test_{_rand(58)}", "created": int(time.time())}
        session.update(obj or {})
        session.update(changes)
        with self.lock:
            self.checkout_sessions[session["id"]] = session
            if line_items is not None:
                self.line_items[session["id"]] = [self._line_item(i) for i in line_items]
        return session

    def complete_checkout_session(self, session_id: str, *, paid: bool = True) -> dict:
        """The buyer paid (or, `paid=False`, an async payment is still processing): the session as Stripe
        then reports it — `status: complete`, `payment_status: paid|unpaid`, a payment intent."""
        with self.lock:
            session = self.checkout_sessions[session_id]
            session.update(status="complete", payment_status="paid" if paid else "unpaid",
                           payment_intent=session.get("payment_intent") or f"pi_{_rand(24)}", url=None)
            return copy.deepcopy(session)

    def event(self, type_: str, obj: dict) -> dict:
        """A Stripe event around `obj`, as the webhook would deliver it."""
        return {"id": f"evt_{_rand(24)}", "object": "event", "api_version": "2024-06-20",
                "created": int(time.time()), "livemode": False, "pending_webhooks": 1,
                "request": {"id": None, "idempotency_key": None}, "type": type_, "data": {"object": obj}}

    def add_refund(self, obj: dict | None = None, **changes) -> dict:
        refund = template("refund") | {"id": f"re_{_rand(24)}", "created": int(time.time())}
        refund.update(obj or {})
        refund.update(changes)
        with self.lock:
            self.refunds[refund["id"]] = refund
        return refund

    def add_payment_intent(self, obj: dict | None = None, **changes) -> dict:
        """A PaymentIntent, succeeded with its charge unless told otherwise, so refunds against it behave as on
        Stripe (at most what is left on it)."""
        intent = template("payment_intent") | {"id": f"pi_{_rand(24)}", "created": int(time.time()), "metadata": {},
                                               "status": "succeeded", "latest_charge": f"ch_{_rand(24)}"}
        intent.update(obj or {})
        intent.update(changes)
        if "amount_received" not in {**(obj or {}), **changes}:
            intent["amount_received"] = intent.get("amount")
        with self.lock:
            self.payment_intents[intent["id"]] = intent
        return intent

    def add_charge(self, obj: dict | None = None, **changes) -> dict:
        charge = template("charge") | {"id": f"ch_{_rand(24)}", "created": int(time.time()), "metadata": {}}
        charge.update(obj or {})
        charge.update(changes)
        with self.lock:
            self.charges[charge["id"]] = charge
        return charge

    def add_dispute(self, obj: dict | None = None, **changes) -> dict:
        dispute = template("dispute") | {"id": f"dp_{_rand(24)}", "created": int(time.time())}
        dispute.update(obj or {})
        dispute.update(changes)
        with self.lock:
            self.disputes[dispute["id"]] = dispute
        return dispute

    def add_event(self, event: dict, *, delivered: bool = True) -> dict:
        """An event as `GET /v1/events` lists it; `delivered`: whether its webhook delivery succeeded."""
        event = copy.deepcopy(event)
        event.setdefault("object", "event")
        event.setdefault("pending_webhooks", 0 if delivered else 1)
        with self.lock:
            self.events[event["id"]] = event
            self.delivered[event["id"]] = delivered
        return event

    def add_webhook_endpoint(self, obj: dict | None = None, **changes) -> dict:
        endpoint = template("webhook_endpoint") | {"id": f"we_{_rand(24)}", "created": int(time.time())}
        endpoint.update(obj or {})
        endpoint.update(changes)
        with self.lock:
            self.webhook_endpoints[endpoint["id"]] = endpoint
        return endpoint

    def calls(self, method: str | None = None, path: str | None = None) -> list[StripeRequest]:
        """Recorded requests, optionally by method and full-match path regex."""
        with self.lock:
            rows = list(self.requests)
        return [r for r in rows if (method is None or r.method == method.upper())
                and (path is None or re.fullmatch(path, r.path))]

    def list_response(self, rows: list[dict], request: StripeRequest, url: str) -> dict:
        """Stripe's list semantics over `rows`: newest first, `created` filters, `limit` (default 10),
        `starting_after` / `ending_before` cursors, `has_more`."""
        q = request.params
        rows = sorted(rows, key=lambda o: (-int(o.get("created") or 0), o.get("id", "")))
        created = q.get("created")
        if isinstance(created, dict):
            ops = {"gte": lambda a, b: a >= b, "gt": lambda a, b: a > b, "lte": lambda a, b: a <= b,
                   "lt": lambda a, b: a < b}
            for op, bound in created.items():
                rows = [o for o in rows if ops[op](int(o.get("created") or 0), int(bound))]
        elif created is not None:
            rows = [o for o in rows if int(o.get("created") or 0) == int(created)]
        ids = [o.get("id") for o in rows]
        if q.get("starting_after"):
            if q["starting_after"] not in ids:
                raise self.error(400, f"No such object: '{q['starting_after']}'", param="starting_after")
            rows = rows[ids.index(q["starting_after"]) + 1:]
        limit = int(q.get("limit", 10))
        if q.get("ending_before"):
            if q["ending_before"] not in ids:
                raise self.error(400, f"No such object: '{q['ending_before']}'", param="ending_before")
            before = rows[:ids.index(q["ending_before"])]
            return {"object": "list", "url": url, "has_more": len(before) > limit, "data": before[-limit:]}
        return {"object": "list", "url": url, "has_more": len(rows) > limit, "data": rows[:limit]}

    # ---- HTTP ------------------------------------------------------------------------------------

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server._serve(self, "GET")

            def do_POST(self):
                server._serve(self, "POST")

            def do_DELETE(self):
                server._serve(self, "DELETE")

        return Handler

    def _serve(self, http: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(http.path)
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        query_pairs = parse_qsl(parts.query, keep_blank_values=True)
        uploads: dict[str, tuple[str, bytes]] = {}
        content_type = http.headers.get("Content-Type") or ""
        if method == "POST" and content_type.startswith("multipart/form-data"):
            form_pairs, uploads = _multipart(content_type, body)
        else:
            form_pairs = parse_qsl(body.decode(), keep_blank_values=True) if method == "POST" else []
        pairs = form_pairs if method == "POST" else query_pairs
        request = StripeRequest(
            method=method, path=parts.path, query=dict(query_pairs), form=dict(form_pairs),
            params=decode_form(pairs), headers={k: v for k, v in http.headers.items()},
            idempotency_key=http.headers.get("Idempotency-Key"), server=self, uploads=uploads)
        with self.lock:
            self.requests.append(request)
        status, body, extra = self._respond(request)
        request.status = status
        payload = json.dumps(body).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(payload)))
        http.send_header("Request-Id", f"req_{_rand(14)}")
        for k, v in extra.items():
            http.send_header(k, v)
        http.end_headers()
        http.wfile.write(payload)

    def _respond(self, request: StripeRequest) -> tuple[int, dict, dict]:
        auth = request.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            return 401, {"error": {"type": "invalid_request_error",
                                   "message": f"Invalid API Key provided: {auth[7:] or '(none)'}"}}, {}
        version = request.headers.get("Stripe-Version")
        if self.api_version and version != self.api_version:
            return 400, {"error": {"type": "invalid_request_error", "param": "Stripe-Version",
                                   "message": f"this server expects Stripe-Version {self.api_version}, "
                                              f"got {version or '(none)'}"}}, {}
        key = request.idempotency_key if request.method == "POST" else None
        fingerprint = (request.method, request.path, tuple(sorted(request.form.items())),
                       tuple(sorted((k, v[1]) for k, v in request.uploads.items())))
        with self.lock:
            failure = next((f for f in self._failures if f["method"] == request.method
                            and f["pattern"].fullmatch(request.path)
                            and not (key and f["saved"] and key in self._idempotent)), None)
            if failure is not None:
                failure["times"] -= 1
                if failure["times"] <= 0:
                    self._failures.remove(failure)
        if failure is not None:
            if failure["ran"]:
                self._dispatch(request)
            if key and failure["saved"]:
                with self.lock:
                    self._idempotent[key] = (fingerprint, failure["status"], copy.deepcopy(failure["body"]))
            return failure["status"], failure["body"], {"Idempotency-Key": key} if key else {}
        if key:
            # one lock over lookup and handling: a concurrent duplicate waits and then replays
            with self.lock:
                if key in self._idempotent:
                    seen, status, body = self._idempotent[key]
                    if seen != fingerprint:
                        return 400, {"error": {
                            "type": "idempotency_error",
                            "message": "Keys for idempotent requests can only be used with the same parameters "
                                       "they were first used with."}}, {}
                    request.replayed = True
                    return status, copy.deepcopy(body), {"Idempotent-Replayed": "true", "Idempotency-Key": key}
                status, body = self._dispatch(request)
                self._idempotent[key] = (fingerprint, status, copy.deepcopy(body))  # an error too, as Stripe
                return status, body, {"Idempotency-Key": key}
        status, body = self._dispatch(request)
        return status, body, {}

    def _dispatch(self, request: StripeRequest) -> tuple[int, dict]:
        with self.lock:
            routes = list(self._routes)
        for method, pattern, handler in routes:
            match = pattern.fullmatch(request.path) if method == request.method else None
            if match:
                try:
                    with self.lock:  # handlers read and write the stores; requests are served one at a time
                        result = handler(request, **match.groupdict())
                except StripeError as exc:
                    return exc.status, exc.body
                if isinstance(result, tuple):
                    return result[0], result[1]
                return 200, result
        return 404, {"error": {"type": "invalid_request_error",
                               "message": f"Unrecognized request URL ({request.method}: {request.path})."}}

    # ---- built-in resources ----------------------------------------------------------------------

    def _builtin_routes(self) -> None:
        r = self.route
        r("POST", r"/v1/products")(self._create_product)
        r("GET", r"/v1/products")(lambda req: self.list_response(
            [p for p in self.products.values() if _active_filter(p, req)], req, "/v1/products"))
        r("GET", r"/v1/products/(?P<id>[^/]+)")(lambda req, id: self._get(self.products, "product", id))
        r("POST", r"/v1/products/(?P<id>[^/]+)")(self._update_product)
        r("POST", r"/v1/prices")(self._create_price)
        r("GET", r"/v1/prices")(lambda req: self.list_response(
            [p for p in self.prices.values() if _active_filter(p, req)
             and req.params.get("product") in (None, p["product"])], req, "/v1/prices"))
        r("GET", r"/v1/prices/(?P<id>[^/]+)")(lambda req, id: self._get(self.prices, "price", id))
        r("POST", r"/v1/prices/(?P<id>[^/]+)")(self._update_price)
        r("POST", r"/v1/checkout/sessions")(self._create_checkout_session)
        r("GET", r"/v1/checkout/sessions")(lambda req: self.list_response(
            [s for s in self.checkout_sessions.values()
             if req.params.get("status") in (None, s.get("status"))
             and req.params.get("payment_intent") in (None, s.get("payment_intent"))],
            req, "/v1/checkout/sessions"))
        r("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)")(
            lambda req, id: self._get(self.checkout_sessions, "checkout.session", id))
        r("GET", r"/v1/checkout/sessions/(?P<id>[^/]+)/line_items")(self._list_line_items)
        r("GET", r"/v1/payment_intents/(?P<id>[^/]+)")(
            lambda req, id: self._get(self.payment_intents, "payment_intent", id))
        r("GET", r"/v1/charges/(?P<id>[^/]+)")(lambda req, id: self._get(self.charges, "charge", id))
        r("GET", r"/v1/disputes/(?P<id>[^/]+)")(lambda req, id: self._get(self.disputes, "dispute", id))
        r("POST", r"/v1/disputes/(?P<id>[^/]+)")(self._update_dispute)
        r("GET", r"/v1/events")(self._list_events)
        r("GET", r"/v1/events/(?P<id>[^/]+)")(lambda req, id: self._get(self.events, "event", id))
        r("GET", r"/v1/webhook_endpoints")(lambda req: self.list_response(
            list(self.webhook_endpoints.values()), req, "/v1/webhook_endpoints"))
        r("GET", r"/v1/webhook_endpoints/(?P<id>[^/]+)")(
            lambda req, id: self._get(self.webhook_endpoints, "webhook_endpoint", id))
        r("POST", r"/v1/files")(self._create_file)
        r("POST", r"/v1/refunds")(self._create_refund)
        r("GET", r"/v1/refunds")(lambda req: self.list_response(
            [r for r in self.refunds.values()
             if req.params.get("payment_intent") in (None, r.get("payment_intent"))
             and req.params.get("charge") in (None, r.get("charge"))], req, "/v1/refunds"))
        r("GET", r"/v1/refunds/(?P<id>[^/]+)")(lambda req, id: self._get(self.refunds, "refund", id))
        r("GET", r"/v1/payment_intents/(?P<id>[^/]+)")(
            lambda req, id: self._get(self.payment_intents, "payment_intent", id))

    def _get(self, store: dict, resource: str, id_: str) -> dict:
        with self.lock:
            if id_ not in store:
                raise self.missing(resource, id_)
            return copy.deepcopy(store[id_])

    def _create_product(self, req: StripeRequest) -> dict:
        p = req.params
        if not p.get("name"):
            raise self.error(400, "Missing required param: name.", code="parameter_missing", param="name")
        product = self.add_product(
            name=p["name"], description=p.get("description"), metadata=p.get("metadata") or {},
            active=_bool(p.get("active", "true")), images=p.get("images") or [], url=p.get("url"),
            **({"id": p["id"]} if p.get("id") else {}))
        if isinstance(p.get("default_price_data"), dict):
            d = p["default_price_data"]
            price = self.add_price(product=product["id"], currency=d["currency"], unit_amount=int(d["unit_amount"]))
            product["default_price"] = price["id"]
        return copy.deepcopy(product)

    def _update_product(self, req: StripeRequest, id: str) -> dict:
        with self.lock:
            if id not in self.products:
                raise self.missing("product", id)
            product = self.products[id]
            p = req.params
            for name in ("name", "description", "url", "default_price"):
                if name in p:
                    product[name] = p[name] or None
            if "active" in p:
                product["active"] = _bool(p["active"])
            if "metadata" in p:
                product["metadata"] = _merge_metadata(product.get("metadata") or {}, p["metadata"])
            product["updated"] = int(time.time())
            return copy.deepcopy(product)

    def _create_price(self, req: StripeRequest) -> dict:
        p = req.params
        for required in ("currency",):
            if not p.get(required):
                raise self.error(400, f"Missing required param: {required}.", code="parameter_missing",
                                 param=required)
        if "unit_amount" not in p and "unit_amount_decimal" not in p and "custom_unit_amount" not in p:
            raise self.error(400, "Missing required param: unit_amount.", code="parameter_missing",
                             param="unit_amount")
        product_id = p.get("product")
        if product_id:
            if product_id not in self.products:
                raise self.missing("product", product_id)
        elif isinstance(p.get("product_data"), dict):
            product_id = self.add_product(name=p["product_data"].get("name", ""),
                                          metadata=p["product_data"].get("metadata") or {})["id"]
        else:
            raise self.error(400, "Missing required param: product.", code="parameter_missing", param="product")
        recurring = p.get("recurring")
        price = self.add_price(
            product=product_id, currency=p["currency"].lower(),
            unit_amount=int(p["unit_amount"]) if "unit_amount" in p else None,
            metadata=p.get("metadata") or {}, nickname=p.get("nickname"), lookup_key=p.get("lookup_key"),
            active=_bool(p.get("active", "true")), tax_behavior=p.get("tax_behavior", "unspecified"),
            type="recurring" if recurring else "one_time",
            recurring=({"interval": recurring.get("interval"), "interval_count": int(recurring.get("interval_count", 1)),
                        "meter": None, "usage_type": "licensed", "trial_period_days": None} if recurring else None))
        return copy.deepcopy(price)

    def _update_price(self, req: StripeRequest, id: str) -> dict:
        with self.lock:
            if id not in self.prices:
                raise self.missing("price", id)
            price = self.prices[id]
            p = req.params
            for immutable in ("unit_amount", "currency", "product", "recurring"):
                if immutable in p:
                    raise self.error(400, f"Received unknown parameter: {immutable}", param=immutable)
            if "active" in p:
                price["active"] = _bool(p["active"])
            for name in ("nickname", "lookup_key", "tax_behavior"):
                if name in p:
                    price[name] = p[name] or None
            if "metadata" in p:
                price["metadata"] = _merge_metadata(price.get("metadata") or {}, p["metadata"])
            return copy.deepcopy(price)

    def _line_item(self, item: dict) -> dict:
        if item.get("object") == "item":
            return copy.deepcopy(item)
        li = template("item") | {"id": f"li_{_rand(24)}", "quantity": int(item.get("quantity", 1))}
        price_id = item.get("price")
        price = copy.deepcopy(self.prices.get(price_id)) if price_id in self.prices else (
            template("item")["price"] | {"id": price_id, "product": item.get("product", f"prod_{_rand(14)}"),
                                         "type": "one_time", "recurring": None})
        li["price"] = price
        amount = (price.get("unit_amount") or 0) * li["quantity"]
        li.update(amount_subtotal=amount, amount_total=amount, currency=price.get("currency", "usd"),
                  description=(self.products.get(price.get("product")) or {}).get("name", li["description"]))
        return li

    def _create_checkout_session(self, req: StripeRequest) -> dict:
        p = req.params
        items = p.get("line_items") or []
        for item in items:
            if item.get("price") and item["price"] not in self.prices:
                raise self.missing("price", item["price"])
        session_id = f"cs_test_{_rand(58)}"
        line_items = [self._line_item(i) for i in items]
        total = sum(li["amount_total"] for li in line_items)
        session = self.add_checkout_session(
            id=session_id, mode=p.get("mode", "payment"), status="open", payment_status="unpaid",
            client_reference_id=p.get("client_reference_id"), metadata=p.get("metadata") or {},
            success_url=p.get("success_url"), cancel_url=p.get("cancel_url"),
            customer_email=p.get("customer_email"), amount_subtotal=total, amount_total=total,
            currency=line_items[0]["currency"] if line_items else None, payment_intent=None,
            url=f"{self.url}/pay/{session_id}", expires_at=int(time.time()) + 86400,
            line_items=None)
        session.pop("line_items", None)
        with self.lock:
            self.line_items[session_id] = line_items
        return copy.deepcopy(session)

    def _list_line_items(self, req: StripeRequest, id: str) -> dict:
        with self.lock:
            if id not in self.checkout_sessions:
                raise self.missing("checkout.session", id)
            items = copy.deepcopy(self.line_items.get(id, []))
        for n, item in enumerate(items):  # list order is the session's own order, not by created
            item.setdefault("created", len(items) - n)
        page = self.list_response(items, req, f"/v1/checkout/sessions/{id}/line_items")
        for item in page["data"]:
            item.pop("created", None)
        return page

    def _create_file(self, req: StripeRequest) -> dict:
        """`POST /v1/files` (multipart, Stripe's files address): dispute evidence must be PDF, JPEG or PNG."""
        purpose = req.params.get("purpose")
        if purpose not in FILE_PURPOSES:
            raise self.error(400, f"Invalid purpose: {purpose}", param="purpose")
        if "file" not in req.uploads:
            raise self.error(400, "Missing required param: file.", code="parameter_missing", param="file")
        filename, content = req.uploads["file"]
        kind = next((k for k, magic in FILE_MAGIC.items() if content.startswith(magic)), None)
        if purpose == "dispute_evidence" and kind not in ("pdf", "jpg", "png"):
            raise self.error(400, "Dispute evidence must be a PDF, JPEG or PNG file.", param="file")
        if len(content) > 5 * 1024 * 1024:
            raise self.error(400, "The file is larger than 5 MB.", param="file")
        file = {"id": f"file_{_rand(24)}", "object": "file", "created": int(time.time()), "expires_at": None,
                "filename": filename, "links": None, "purpose": purpose, "size": len(content), "title": None,
                "type": kind, "url": None}
        self.files[file["id"]] = file
        self.file_contents[file["id"]] = content
        return copy.deepcopy(file)

    def _update_dispute(self, req: StripeRequest, id: str) -> dict:
        return _update_dispute_impl(self, req, id)

    def _list_events(self, req: StripeRequest) -> dict:
        return _list_events_impl(self, req)

    def _create_refund(self, req: StripeRequest) -> dict:
        p = req.params
        if not (p.get("charge") or p.get("payment_intent")):
            raise self.error(400, "One of the following params should be provided for this request: "
                                  "payment_intent or charge.", param="charge")
        pi = self.payment_intents.get(p.get("payment_intent")) if p.get("payment_intent") else None
        if p.get("payment_intent") and pi is None and self.payment_intents:
            raise self.missing("payment_intent", p["payment_intent"])
        if p.get("reason") not in (None, "duplicate", "fraudulent", "requested_by_customer"):
            raise self.error(400, f"Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                             param="reason")
        currency, charge = p.get("currency"), p.get("charge")
        if pi is not None:  # as Stripe: at most what is left on the charge, all of it by default
            left = pi["amount_received"] - pi.setdefault("amount_refunded", 0)
            if left <= 0:
                raise self.error(400, f"Charge {pi['latest_charge']} has already been refunded.",
                                 code="charge_already_refunded")
            amount = int(p.get("amount", left))
            if amount > left:
                raise self.error(400, f"Refund amount ({amount}) is greater than unrefunded amount on charge "
                                      f"({left})", param="amount")
            pi["amount_refunded"] += amount
            currency, charge = pi["currency"], pi["latest_charge"]
        else:
            amount = int(p["amount"]) if "amount" in p else 0
        refund = self.add_refund(charge=charge, payment_intent=p.get("payment_intent"), amount=amount,
                                 currency=currency or "usd", metadata=p.get("metadata") or {},
                                 reason=p.get("reason"), status="succeeded")
        return copy.deepcopy(refund)


# Stripe's dispute evidence: text fields take a string, file fields the id of a file uploaded with
# purpose `dispute_evidence` (`file_…`)
EVIDENCE_TEXT = {"access_activity_log", "billing_address", "cancellation_policy_disclosure", "cancellation_rebuttal",
                 "customer_email_address", "customer_name", "customer_purchase_ip", "duplicate_charge_explanation",
                 "duplicate_charge_id", "product_description", "refund_policy_disclosure",
                 "refund_refusal_explanation", "service_date", "shipping_address", "shipping_carrier",
                 "shipping_date", "shipping_tracking_number", "uncategorized_text"}
EVIDENCE_FILES = {"cancellation_policy", "customer_communication", "customer_signature",
                  "duplicate_charge_documentation", "receipt", "refund_policy", "service_documentation",
                  "shipping_documentation", "uncategorized_file"}
EVIDENCE_TEXT_LIMIT = 150_000  # characters across every text field
EVENT_TYPES_LIMIT = 20


def _update_dispute_impl(server: "StripeServer", req: StripeRequest, id: str) -> dict:
    if id not in server.disputes:
        raise server.missing("dispute", id)
    dispute = server.disputes[id]
    p = req.params
    for name in p:
        if name not in ("evidence", "metadata", "submit", "expand"):
            raise server.error(400, f"Received unknown parameter: {name}", param=name)
    if dispute["status"] in ("won", "lost", "warning_closed"):
        raise server.error(400, f"This dispute is already closed: {dispute['status']}.", param="evidence")
    submitting = _bool(p.get("submit", "true"))  # Stripe submits unless told `submit=false`
    if submitting and int((dispute.get("evidence_details") or {}).get("submission_count") or 0) > 0:
        # "Typically, you may only submit evidence once" (Stripe's `evidence_details.submission_count`)
        raise server.error(400, "Evidence for this dispute has already been submitted.", param="evidence")
    evidence = p.get("evidence") or {}
    if not isinstance(evidence, dict):
        raise server.error(400, "Invalid object", param="evidence")
    total = 0
    for name, value in evidence.items():
        if name in EVIDENCE_FILES:
            if value and not str(value).startswith("file_"):
                raise server.error(400, f"No such file upload: '{value}'", param=f"evidence[{name}]")
        elif name in EVIDENCE_TEXT:
            total += len(value)
        else:
            raise server.error(400, f"Received unknown parameter: evidence[{name}]", param=f"evidence[{name}]")
    for name, value in evidence.items():
        if name in EVIDENCE_FILES and value and value not in server.files:
            raise server.error(400, f"No such file upload: '{value}'", param=f"evidence[{name}]")
    if total > EVIDENCE_TEXT_LIMIT:
        raise server.error(400, "The evidence text is too long.", param="evidence")
    dispute["evidence"] = {**(dispute.get("evidence") or {}), **{k: v or None for k, v in evidence.items()}}
    if "metadata" in p:
        dispute["metadata"] = _merge_metadata(dispute.get("metadata") or {}, p["metadata"])
    details = dispute.setdefault("evidence_details", {})
    details["has_evidence"] = True
    if submitting:
        details["submission_count"] = int(details.get("submission_count") or 0) + 1
        dispute["status"] = "under_review"
    return copy.deepcopy(dispute)


def _list_events_impl(server: "StripeServer", req: StripeRequest) -> dict:
    p = req.params
    for name in p:
        if name not in ("type", "types", "created", "delivery_success", "limit", "starting_after", "ending_before"):
            raise server.error(400, f"Received unknown parameter: {name}", param=name)
    if "type" in p and "types" in p:
        raise server.error(400, "You may only specify one of these parameters: type, types.", param="types")
    types = p.get("types")
    if types is not None:
        if not isinstance(types, list) or len(types) > EVENT_TYPES_LIMIT:
            raise server.error(400, f"types: at most {EVENT_TYPES_LIMIT} event types.", param="types")
    if not 1 <= int(p.get("limit", 10)) <= 100:
        raise server.error(400, "Invalid integer: limit must be between 1 and 100.", param="limit")
    wanted = set(types) if types is not None else ({p["type"]} if "type" in p else None)
    delivery = p.get("delivery_success")
    if delivery not in (None, "true", "false"):
        raise server.error(400, "Invalid boolean: delivery_success", param="delivery_success")
    rows = [e for e in server.events.values()
            if (wanted is None or e["type"] in wanted)
            and (delivery is None or server.delivered[e["id"]] == (delivery == "true"))]
    return server.list_response(rows, req, "/v1/events")


FILE_PURPOSES = ("dispute_evidence", "identity_document", "business_logo", "customer_signature", "additional_verification")
FILE_MAGIC = {"pdf": b"%PDF-", "jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


def _multipart(content_type: str, body: bytes) -> tuple[list[tuple[str, str]], dict[str, tuple[str, bytes]]]:
    """A multipart/form-data body: its plain fields as (name, value) pairs, its files by field name."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    pairs, files = [], {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        content = part.get_payload(decode=True) or b""
        if filename is not None:
            files[name] = (filename, content)
        else:
            pairs.append((name, content.decode()))
    return pairs, files


def _rand(n: int) -> str:
    return (uuid.uuid4().hex + uuid.uuid4().hex + uuid.uuid4().hex)[:n]


def _bool(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _active_filter(obj: dict, req: StripeRequest) -> bool:
    return "active" not in req.params or obj.get("active") == _bool(req.params["active"])


def _merge_metadata(current: dict, update: Any) -> dict:
    if update == "":  # `metadata=` clears all keys
        return {}
    merged = dict(current)
    for k, v in (update or {}).items():
        if v == "":
            merged.pop(k, None)  # an empty value unsets a key, as on Stripe
        else:
            merged[k] = v
    return merged


@pytest.fixture
def stripe_server():
    server = StripeServer().start()
    yield server
    server.stop()
