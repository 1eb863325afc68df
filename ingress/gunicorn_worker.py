"""gunicorn's `gthread` worker with a deadline on each request's head, for the ingress (`ingress.gunicorn_conf`).

gthread parks an idle connection in its poller, but once a first byte arrives it gives the connection to a
thread that reads the request line and headers with blocking reads and no timeout: a client that trickles
its headers holds that thread for as long as it keeps sending. Here the head must be complete within
HEADER_READ_TIMEOUT seconds of the thread taking the connection (a total, like nginx's
`client_header_timeout`, not per read); past it the connection is cut and the thread is free. The body then
has BODY_READ_TIMEOUT per read (`pre_request` in ingress/gunicorn_conf.py, which ends the head's deadline).

A connection cut for a stalled read is shut down in its thread, so gunicorn's lingering close (up to 2 s
on the main loop, which accepts for every thread) finds nothing to wait for.
"""
from __future__ import annotations

import errno
import os
import socket
import time

from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

def env_number(name: str, default: str, kind: type, low: float, high: float):
    """A number from the environment within [low, high]: anything else stops gunicorn with one line naming it
    (gunicorn would print "Failed to read config file" and a traceback)."""
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # NaN fails the comparison too
        raise SystemExit(f"Error: {name} must be a number from {low} to {high}, got {raw!r}")
    return value


HEADER_READ_TIMEOUT = env_number("HEADER_READ_TIMEOUT", "10", float, 0.1, 3600)


class DeadlineUnreader(SocketUnreader):
    """Reads the head before `deadline` (monotonic seconds; None once the head is in), and remembers whether a
    read ever stalled."""

    def __init__(self, sock, max_chunk: int = 8192) -> None:
        super().__init__(sock, max_chunk)
        self.deadline: float | None = None
        self.stalled = False

    def chunk(self, size_hint=None):
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.stalled = True
                raise NoMoreData(self.buf.getvalue())
            self.sock.settimeout(remaining)
        try:
            return super().chunk(size_hint)
        except socket.timeout:
            self.stalled = True
            if self.deadline is not None:  # the head: gunicorn drops the connection quietly
                raise NoMoreData(self.buf.getvalue()) from None
            raise  # the body: the app sees its read fail (a 400)


class HeadDeadlineConn(gthread.TConn):
    def init(self) -> None:
        fresh = self.parser is None
        super().init()
        if fresh and not self.is_http2 and type(self.parser.unreader) is SocketUnreader \
                and not self.parser.unreader.buf.getvalue():
            self.parser.unreader = DeadlineUnreader(self.sock)  # nothing read yet: swapped before the first byte
        unreader = self.parser.unreader
        if isinstance(unreader, DeadlineUnreader):  # each request on the connection, keep-alive ones too
            unreader.deadline = time.monotonic() + HEADER_READ_TIMEOUT


def end_head(req, body_read_timeout: float) -> None:
    """The head is in (gunicorn's `pre_request`): each body read may now take `body_read_timeout` seconds."""
    unreader = getattr(req, "unreader", None)
    if isinstance(unreader, DeadlineUnreader):
        unreader.deadline = None
    sock = getattr(unreader, "sock", None)
    if sock is not None:
        sock.settimeout(body_read_timeout)


class HeadDeadlineThreadWorker(gthread.ThreadWorker):
    def accept(self, listener) -> None:
        """gthread's accept, making our connection type (gthread names its class inside the method)."""
        try:
            client_sock, client_addr = listener.accept()
            self.nr_conns += 1
            client_sock.setblocking(True)
            self.enqueue_req(HeadDeadlineConn(self.cfg, client_sock, client_addr, listener.getsockname()))
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise

    def handle(self, conn):
        result = super().handle(conn)
        unreader = getattr(conn.parser, "unreader", None)
        if result is False and getattr(unreader, "stalled", False):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)  # no lingering close for a client that stopped sending
            except OSError:
                pass
        return result
