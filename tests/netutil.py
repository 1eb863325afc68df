"""Small helpers for tests that talk over real sockets: free ports, an app served over HTTP, polling."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(app):
    """Serve a WSGI app on a free local port in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll until `predicate()` is true; False when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@contextmanager
def gunicorn_ingress(database_url: str, redis_url: str, redis_namespace: str, **settings: str):
    """The ingress as production runs it: gunicorn with the repository's gunicorn.conf.py; yields (base URL, port)."""
    import requests

    from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR",)}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace,
               STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET,
               ADMIN_TOKEN=ADMIN_TOKEN, PORT=str(port), HOST="127.0.0.1", WEB_CONCURRENCY="2")
    env.update(settings)
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
        yield base, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
