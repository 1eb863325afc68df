"""Real receivers for outbound traffic: an SMTP server (aiosmtpd) and a platform endpoint that verifies
every `Platform-Signature` with `tasks.signatures.verify`. Import the fixtures into a test module."""
from __future__ import annotations

import email
import errno
import email.policy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from standardwebhooks import Webhook, WebhookVerificationError

from tasks import signatures
from tests.conftest import PLATFORM_SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met within %.1fs" % timeout)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class SmtpSink:
    """An aiosmtpd server on a fixed free port that can be stopped ("down") and started again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.peers: list[tuple] = []  # each mail's client address: one per SMTP session
        self.controller: Controller | None = None
        self._published = False

    @property
    def url(self) -> str:
        self._published = True  # from now on the port is the server's address: a restart must keep it
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.peers.append(session.peer)
        return "250 OK"

    def start(self) -> None:
        """Listen on `self.port`. A free port is only reserved while bound, so another process can take
        it (as the local port of an outgoing connection) before we listen: then, while nobody has been
        told the URL, another is drawn; a restart keeps its port and waits, bounded, for it to be free.
        The port is checked first because aiosmtpd reports a failed bind only after its ready timeout."""
        deadline = time.monotonic() + 30
        while True:
            while not _port_free(self.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SMTP sink: port {self.port} stayed taken")
                if self._published:
                    time.sleep(0.05)
                else:
                    self.port = free_port()
            controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10,
                                    enable_SMTPUTF8=True)  # as mail servers do: addresses beyond ASCII
            try:
                controller.start()
            except OSError as exc:  # taken in the instant between the check and the bind
                controller.loop.close()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                continue
            self.controller = controller
            return

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def to(self, address: str) -> list:
        return [m for m, (_, rcpts) in zip(self.messages, self.envelopes) if address in rcpts]


class PlatformReceiver:
    """POST endpoint: verifies the signature of every request; `fail_next` answers 503 that many times."""

    def __init__(self, secret: str = PLATFORM_SECRET) -> None:
        self.secret = secret
        self.events: list[dict] = []
        self.rejected: list[str] = []
        self.peers: list[tuple] = []  # each request's client address: one per connection
        self.fail_next = 0
        self.status_next: int | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # a connection is kept for the next request, as a web server keeps it

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                receiver.peers.append(self.client_address)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    signatures.verify(body, self.headers.get("Platform-Signature"), receiver.secret)
                    # and the Standard Webhooks headers, as a receiver using that library checks them
                    Webhook(signatures.standard_secret(receiver.secret)).verify(body, dict(self.headers.items()))
                except (signatures.SignatureError, WebhookVerificationError) as exc:
                    receiver.rejected.append(str(exc))
                    return self._answer(400)
                if receiver.status_next is not None:
                    status, receiver.status_next = receiver.status_next, None
                    return self._answer(status)
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    return self._answer(503)
                event = json.loads(body)
                event["_headers"] = {"Platform-Event-Id": self.headers.get("Platform-Event-Id"),
                                     "webhook-id": self.headers.get("webhook-id")}
                receiver.events.append(event)
                self._answer(200)

            def _answer(self, status: int) -> None:
                payload = json.dumps({"received": status == 200}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # a kept connection's thread does not hold up the stop
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/coursepipe/events"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def smtp_sink():
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def platform_receiver():
    receiver = PlatformReceiver()
    receiver.start()
    yield receiver
    receiver.stop()
