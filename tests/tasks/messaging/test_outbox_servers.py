"""The SMTP sink the delivery and chaos tests use: it survives its free port being taken meanwhile."""
from __future__ import annotations

import smtplib
import socket
import threading

from tests.tasks.messaging.outbox_servers import SmtpSink


def _occupy(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def _send(sink: SmtpSink) -> None:
    with smtplib.SMTP("127.0.0.1", sink.port, timeout=5) as client:
        client.sendmail("a@example.test", ["b@example.test"], "Subject: hi\r\n\r\nbody")


def test_a_port_taken_before_the_first_start_is_replaced_by_another():
    sink = SmtpSink()
    taken = sink.port
    squatter = _occupy(taken)
    try:
        sink.start()
        assert sink.port != taken
        _send(sink)
        assert len(sink.messages) == 1
    finally:
        sink.stop()
        squatter.close()


def test_a_restart_keeps_its_published_port_and_waits_for_it():
    sink = SmtpSink()
    sink.start()
    url = sink.url
    sink.stop()
    squatter = _occupy(sink.port)
    release = threading.Timer(0.3, squatter.close)
    release.start()
    try:
        sink.start()  # waits until the squatter lets go
        assert sink.url == url
        _send(sink)
        assert len(sink.messages) == 1
    finally:
        release.join()
        sink.stop()
