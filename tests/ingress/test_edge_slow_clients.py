"""Slow clients do not take the ingress offline: 50 connections that send their headers and one byte of a
100-byte body, held open, do not delay a signed webhook by more than a second (real gunicorn, with the
repository's gunicorn.conf.py, and `coursepipe serve`'s server)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET
from tests.netutil import free_port, http_server, wait_until
from tests.signing import platform_event, platform_headers

ROOT = Path(__file__).resolve().parents[2]
SLOW_CLIENTS = 50


@contextmanager
def slow_clients(port: int, n: int = SLOW_CLIENTS):
    with ExitStack() as stack:
        for _ in range(n):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            sock.sendall(b"POST /webhooks/platform HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Platform-Signature: t=1,v1=00\r\nContent-Length: 100\r\n\r\n{")
        yield


def _signed_webhook_seconds(base: str) -> float:
    raw = json.dumps(platform_event("student.upserted", {"student_id": "stu_slow"})).encode()
    started = time.monotonic()
    response = requests.post(f"{base}/webhooks/platform", data=raw, headers=platform_headers(raw), timeout=10)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return elapsed


def _assert_not_delayed(base: str, port: int) -> None:
    with slow_clients(port):
        # the 50 are connected and mid-body; a slow reader would hold every worker now
        try:
            elapsed = _signed_webhook_seconds(base)
        except requests.exceptions.Timeout:
            pytest.fail("the signed webhook got no answer within 10 s behind 50 slow clients")
        assert elapsed < 1.0, f"the signed webhook took {elapsed:.2f} s behind {SLOW_CLIENTS} slow clients"
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200


@pytest.mark.postgres
def test_gunicorn_ingress_serves_a_webhook_past_50_slow_clients(pg_database, redis_url, redis_namespace):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR",)}
    env.update(DATABASE_URL=pg_database.url, REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace,
               STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET,
               ADMIN_TOKEN=ADMIN_TOKEN, PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="2")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ingress.wsgi:app"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return requests.get(f"{base}/healthz", timeout=5).status_code == 200
        except requests.RequestException:  # still booting
            return False

    try:
        assert wait_until(up, timeout=60)
        _assert_not_delayed(base, port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_server_serves_a_webhook_past_50_slow_clients(app):
    """`coursepipe serve` runs werkzeug's threaded server (a thread per connection)."""
    with http_server(app) as base:
        _assert_not_delayed(base, int(base.rsplit(":", 1)[1]))
