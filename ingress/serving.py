"""`coursepipe serve`'s HTTP server: werkzeug's threaded server (a thread per connection, at most MAX_CONNECTIONS at
once), logging one JSON line per request — method, path without its query string (where search terms and e-mails
would ride), status — through the process's handlers, instead of werkzeug's ANSI-coloured text lines.

Slow clients: each read (request line, headers, body) and write waits at most READ_TIMEOUT_SECONDS, and a request's
line and headers must all arrive within HEAD_DEADLINE_SECONDS of its first byte's wait, so a client trickling its
headers a byte at a time is cut like one that stops. A connection past MAX_CONNECTIONS is closed at once, so
clients cannot make the process start threads without bound. `serve` is for one machine; the internet reaches
`coursepipe ingress` (gunicorn) through a buffering proxy (docs/runbook.md, "The edge")."""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from werkzeug.serving import BaseWSGIServer, ThreadedWSGIServer, WSGIRequestHandler

log = logging.getLogger("coursepipe.http")
READ_TIMEOUT_SECONDS = 10
HEAD_DEADLINE_SECONDS = 10
MAX_CONNECTIONS = 200


class _HeadDeadline:
    """The connection's reader, with a deadline on the request's line and headers (`readline`, what the standard
    library's parser reads them with) while one is set; every other read goes straight through."""

    def __init__(self, rfile: Any, connection: Any, read_timeout: float) -> None:
        self._rfile, self._connection, self._read_timeout = rfile, connection, read_timeout
        self.deadline: float | None = None

    def readline(self, size: int = -1) -> bytes:
        if self.deadline is None:
            return self._rfile.readline(size)
        # what has arrived, a receive at a time (`peek` receives at most once): a line trickled a byte at a time
        # is bounded by the deadline too, not only the wait for each byte
        line = bytearray()
        while size < 0 or len(line) < size:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's line and headers took too long")
            self._connection.settimeout(min(left, self._read_timeout))
            arrived = self._rfile.peek(1)
            if not arrived:
                break  # the client closed the connection
            limit = len(arrived) if size < 0 else min(len(arrived), size - len(line))
            end = arrived.find(b"\n", 0, limit)
            line += self._rfile.read(end + 1 if end >= 0 else limit)
            if end >= 0:
                break
        return bytes(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rfile, name)


class RequestHandler(WSGIRequestHandler):
    # each read (request line, headers, body) and write on a connection waits at most this long, then the
    # connection is dropped: a client that stops sending does not keep its thread forever
    timeout = READ_TIMEOUT_SECONDS

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadDeadline(self.rfile, self.connection, self.timeout)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        head_deadline = getattr(self.server, "head_deadline", HEAD_DEADLINE_SECONDS)
        self.rfile.deadline = time.monotonic() + head_deadline  # type: ignore[attr-defined]
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.rfile.deadline = None  # type: ignore[attr-defined]  # the body: each read bounded, no total
        self.connection.settimeout(self.timeout)
        return parsed

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", None)  # unset when the request line itself was bad
        log.info("request", extra={"event": {
            "method": getattr(self, "command", None), "path": path.split("?", 1)[0] if path else None,
            "status": int(code) if str(code).isdigit() else str(code), "remote": self.address_string()}})

    def log(self, type: str, message: str, *args) -> None:
        """werkzeug's other lines (a bad request line, an error), as plain text."""
        getattr(log, type if type in ("warning", "error", "exception") else "info")(message.rstrip(), *args)


class BoundedThreadedServer(ThreadedWSGIServer):
    """A thread per connection, at most `max_connections` at once: one more is closed as it is accepted."""

    def __init__(self, host: str, port: int, app, *, max_connections: int = MAX_CONNECTIONS,
                 head_deadline: float = HEAD_DEADLINE_SECONDS) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections, self.head_deadline = max_connections, head_deadline
        super().__init__(host, port, app, handler=RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("connection refused: %d connections open", self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def make_ingress_server(host: str, port: int, app, *, max_connections: int = MAX_CONNECTIONS,
                        head_deadline: float = HEAD_DEADLINE_SECONDS) -> BaseWSGIServer:
    return BoundedThreadedServer(host, port, app, max_connections=max_connections, head_deadline=head_deadline)
