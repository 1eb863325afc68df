"""A small local Stripe API for reconciliation tests: GET /v1/checkout/sessions with Stripe's list
semantics (created[gte], status, limit, starting_after, has_more), served over real HTTP to the real
`stripe` client. (A fuller fake Stripe, tests/stripe_server.py, may serve the same routes.)"""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.signing import stripe_fixture


def checkout_session(**changes) -> dict:
    """A Checkout Session shaped like Stripe's (from the recorded fixture), with our metadata conventions."""
    obj = copy.deepcopy(stripe_fixture("checkout.session.completed")["data"]["object"])
    obj.update(id=f"cs_test_{uuid.uuid4().hex}", created=int(time.time()), status="complete", payment_status="paid",
               payment_intent=f"pi_{uuid.uuid4().hex[:24]}")
    obj.update(changes)
    return obj


class StripeSessions:
    def __init__(self) -> None:
        self.sessions: list[dict] = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                server.requests.append({"path": parts.path, "query": query,
                                        "auth": self.headers.get("Authorization")})
                if parts.path != "/v1/checkout/sessions":
                    return self._json(404, {"error": {"type": "invalid_request_error", "message": "no such route"}})
                rows = sorted(server.sessions, key=lambda s: (-s["created"], s["id"]))  # newest first, like Stripe
                if "created[gte]" in query:
                    rows = [s for s in rows if s["created"] >= int(query["created[gte]"])]
                if "status" in query:
                    rows = [s for s in rows if s["status"] == query["status"]]
                if "starting_after" in query:
                    ids = [s["id"] for s in rows]
                    rows = rows[ids.index(query["starting_after"]) + 1:]
                limit = int(query.get("limit", 10))
                page = rows[:limit]
                self._json(200, {"object": "list", "url": "/v1/checkout/sessions", "has_more": len(rows) > limit,
                                 "data": page})

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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self):
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stripe_sessions():
    server = StripeSessions()
    server.start()
    yield server
    server.stop()
