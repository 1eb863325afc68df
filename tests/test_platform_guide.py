"""docs/platform.md, run: its Node verifier checks what coursepipe really sends, and its worked example
(sell a course, come back from Checkout, catch up on the events) answers in the shapes it shows."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from db.enums import OutboxChannel
from db.types import utcnow
from tasks import signatures
from tasks.messaging import delivery
from tests.conftest import PLATFORM_SECRET, make_settings
from tests.ingress.test_selling import READ, app, on_sale, settings  # noqa: F401  (fixtures)
from tests.signing import platform_headers

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "platform.md"
_EXAMPLE = re.compile(r"<!-- example: (?P<name>[\w.-]+) -->\s*```(?P<lang>\w+)\n(?P<body>.*?)```", re.DOTALL)


def examples() -> dict[str, str]:
    found = {m.group("name"): m.group("body") for m in _EXAMPLE.finditer(GUIDE.read_text())}
    assert found, "no examples found in docs/platform.md"
    return found


def example(name: str):
    return json.loads(examples()[name])


def assert_same_shape(documented, actual, where="$"):
    """The keys the guide shows are the keys the API answers with (`"…"` in the guide: more may follow)."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), where
        shown = set(documented) - {"…"}
        assert (shown <= set(actual)) if "…" in documented else (shown == set(actual)), (where, shown, set(actual))
        for key in shown:
            if documented[key] != "…":
                assert_same_shape(documented[key], actual[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and actual:
        assert_same_shape(documented[0], actual[0], f"{where}[0]")


# --------------------------------------------------------------------------- the Node verifier

RUNNER = """
const { verifyPlatformSignature, verifyStandardWebhook } = require("./verify.js");
const input = JSON.parse(require("node:fs").readFileSync(0, "utf8"));
const body = Buffer.from(input.body, "utf8");
console.log(JSON.stringify({
  platform: verifyPlatformSignature(body, input.headers["platform-signature"], input.secret),
  standard: verifyStandardWebhook(body, input.headers, input.secret),
}));
"""


@pytest.fixture
def captured():
    """An HTTP receiver that keeps the raw body and headers of what it is sent."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/events", seen
    server.shutdown()
    server.server_close()


def _node_verdict(tmp_path, body: bytes, headers: dict, secret: str) -> dict:
    (tmp_path / "verify.js").write_text(examples()["verify.js"])
    (tmp_path / "run.js").write_text(RUNNER)
    done = subprocess.run(["node", "run.js"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          input=json.dumps({"body": body.decode(), "headers": headers, "secret": secret}))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_node_verifier_of_the_guide_accepts_what_coursepipe_sends(tmp_path, captured):
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    url, seen = captured
    job = delivery.Job(id=1, channel=OutboxChannel.PLATFORM, topic="booking.rejected", recipients=(),
                       payload={"type": "booking.rejected", "data": {"booking_id": "bk_1",
                                                                     "reason": "no_active_enrollment"}},
                       created_at=utcnow(), attempts=1, public_id="0" * 32, sequence=1)
    outcome = delivery.transmit(job, settings=make_settings("sqlite://", platform_callback_url=url))
    assert outcome.ok, outcome.error
    [(body, headers)] = seen
    assert _node_verdict(tmp_path, body, headers, PLATFORM_SECRET) == {"platform": True, "standard": True}
    assert _node_verdict(tmp_path, body.replace(b"bk_1", b"bk_2"), headers, PLATFORM_SECRET) == \
        {"platform": False, "standard": False}
    assert _node_verdict(tmp_path, body, headers, "another-secret") == {"platform": False, "standard": False}
    # and the whsec_ form the guide gives for Standard Webhooks libraries is the same key
    from standardwebhooks import Webhook

    Webhook(signatures.standard_secret(PLATFORM_SECRET)).verify(body, headers)


# --------------------------------------------------------------------------- the worked example


def test_the_worked_example_answers_in_the_shapes_the_guide_shows(app, runtime, worker, on_sale,  # noqa: F811
                                                                  stripe_server):
    from tests.conftest import drain

    client = app.test_client()
    assert_same_shape(example("course-price"), client.get("/v1/courses/SFZ", headers=READ).json["price"])
    assert_same_shape(example("package"), client.get("/v1/packages/TEN", headers=READ).json)

    request = example("checkout-request")
    created = client.post("/v1/checkout-sessions", json=request, headers={**READ, "Idempotency-Key": "guide-1"})
    assert created.status_code == 201
    assert_same_shape(example("checkout-created"), created.json)

    stripe_server.complete_checkout_session(created.json["id"])
    state = client.get(f"/v1/checkout-sessions/{created.json['id']}", headers=READ).json
    assert_same_shape(example("checkout-state"), state)
    assert state["enrollment"]["status"] == "active"

    inbound = example("inbound-envelope")
    inbound["occurred_at"] = utcnow().isoformat()
    body = json.dumps(inbound).encode()
    assert client.post("/webhooks/platform", data=body, headers=platform_headers(body)).json == {
        "received": True, "duplicate": False}
    drain(runtime)

    feed = client.get("/v1/events", headers=READ).json
    assert_same_shape(example("event-feed"), feed)
    created_event = next(e for e in feed["events"] if e["type"] == "enrollment.created")
    assert_same_shape(example("outbound-envelope"), created_event)
    assert created_event["sequence"] == 1 and created_event["data"]["student_id"] == request["student_id"]
    assert client.get(f"/v1/events?after={feed['next']}", headers=READ).json == {"events": [], "next": feed["next"]}
