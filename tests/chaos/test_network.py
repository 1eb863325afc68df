"""The multi-host suite's fault proxy, on loopback: what it adds, cuts and heals."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.chaos.network import Proxy


@pytest.fixture
def echo():
    """A TCP echo server on loopback; yields its (host, port)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn):
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except ConnectionResetError:  # the proxy's cut
                pass

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()
    server.close()


def connect(proxy: Proxy) -> socket.socket:
    host, port = proxy.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> float:
    started = time.monotonic()
    sock.sendall(payload)
    assert sock.recv(64) == payload
    return time.monotonic() - started


def test_relays_and_adds_latency_each_way(echo):
    proxy = Proxy("t", "127.0.0.1", echo)
    try:
        with connect(proxy) as sock:
            round_trip(sock)
            proxy.degrade(latency=0.1)
            assert round_trip(sock) >= 0.2  # 100 ms there, 100 ms back
            proxy.heal()
            assert proxy.latency == 0 and proxy.loss == 0
    finally:
        proxy.close()


def test_loss_holds_chunks_back_for_a_retransmission_timeout(echo):
    proxy = Proxy("t", "127.0.0.1", echo)
    try:
        proxy.degrade(loss=1.0)
        with connect(proxy) as sock:
            assert round_trip(sock) >= 0.4  # each way held at least 200 ms, nothing lost
        assert proxy.stats["held"] >= 2
    finally:
        proxy.close()


def exchange(sock: socket.socket) -> None:
    """One byte there and back; OSError when the connection is gone."""
    sock.sendall(b"x")
    if not sock.recv(64):
        raise ConnectionResetError("closed by the proxy")


def test_a_cut_resets_open_connections_and_refuses_new_ones_until_healed(echo):
    proxy = Proxy("t", "127.0.0.1", echo)
    try:
        with connect(proxy) as sock:
            round_trip(sock)
            assert proxy.cut() == 1
            with pytest.raises(OSError):
                exchange(sock)
        with pytest.raises(OSError):  # reset as it connects, or at its first exchange
            with connect(proxy) as refused:
                exchange(refused)
        proxy.heal()
        with connect(proxy) as sock:
            round_trip(sock)
    finally:
        proxy.close()
