"""`coursepipe serve` starts on the embedded default and answers /healthz; a missing secret stops it."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET
from tests.signing import platform_event, platform_headers

CLI = [sys.executable, "-m", "coursepipe.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}", STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
               PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET, ADMIN_TOKEN=ADMIN_TOKEN)
    env.update(extra)
    return env


def test_missing_secret_stops_startup_with_one_line(tmp_path):
    env = _env(tmp_path)
    del env["PLATFORM_WEBHOOK_SECRET"]
    proc = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "Error: PLATFORM_WEBHOOK_SECRET is required but not set"


def test_serve_embedded_answers_healthz_and_readyz(tmp_path):
    env = _env(tmp_path)
    subprocess.run([*CLI, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=60)
    port = _free_port()
    # its output to a file: a pipe nobody reads fills (a request line per poll below) and the server then blocks
    # on its next log line, answering nothing and not stopping
    output = tmp_path / "serve.log"
    with output.open("w") as sink:
        proc = subprocess.Popen([*CLI, "serve", "--port", str(port), "--host", "127.0.0.1"], env=env,
                                stdout=sink, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(output.read_text())
                time.sleep(0.1)
        assert body is not None and b'"ok"' in body
        ready = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).read()
        assert b'"ready"' in ready
        # the embedded pipeline end to end: a signed event is stored, processed by a worker thread
        event = platform_event("student.upserted", {"student_id": "stu_serve", "email": "s@example.test"})
        body = json.dumps(event).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/platform", data=body,
                                         headers=platform_headers(body), method="POST")
        assert json.loads(urllib.request.urlopen(request, timeout=5).read()) == {"received": True,
                                                                                 "duplicate": False}

        def status():
            listing = urllib.request.Request(f"http://127.0.0.1:{port}/admin/events",
                                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            return json.loads(urllib.request.urlopen(listing, timeout=5).read())["events"][0]["status"]

        deadline = time.monotonic() + 30
        while status() != "processed" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status() == "processed"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"`coursepipe serve` did not stop within 20 s of SIGTERM: {output.read_text()[-3000:]}")
