"""Every process logs JSON lines on stderr — `coursepipe serve` (werkzeug's request lines plain, without ANSI
colours or query strings), Dramatiq's main and worker processes under `coursepipe worker`, the scheduler — and an
admin action's audit line is written whatever LOG_LEVEL says (real subprocesses)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import requests

from db.migrate import upgrade
from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET
from tests.netutil import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "coursepipe.cli"]


class Lines:
    """A subprocess's stderr, line by line, read by a thread (bounded waits poll it)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def join(self) -> list[str]:
        self._thread.join(timeout=30)
        return [line for line in self.lines if line.strip()]


@contextmanager
def process(args: list[str], tmp_path, **env_extra):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    if not (tmp_path / "logs.db").exists():
        upgrade(url)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(DATABASE_URL=url, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET,
               ADMIN_TOKEN=ADMIN_TOKEN, **env_extra)
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    lines = Lines(proc.stderr)
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _json_lines(lines: list[str]) -> list[dict]:
    parsed = []
    for number, line in enumerate(lines):
        assert "\x1b" not in line and "\\u001b" not in line, f"an ANSI escape in {line!r}"
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}, in:\n" + "\n".join(lines[number:number + 40])) \
                from None
    return parsed


def _serve(tmp_path, **env):
    port = free_port()
    return process(["serve", "--port", str(port)], tmp_path, **env), f"http://127.0.0.1:{port}"


def _up(base: str, proc) -> bool:
    assert proc.poll() is None, "the process exited"
    try:
        return requests.get(f"{base}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_serve_logs_each_request_as_a_plain_json_line_without_its_query(tmp_path):
    started, base = _serve(tmp_path)
    with started as (proc, lines):
        assert wait_until(lambda: _up(base, proc), timeout=60)
        requests.get(f"{base}/v1/courses", params={"q": "ann@example.test"}, timeout=5)  # 401: no token
        retried = requests.post(f"{base}/admin/outbox/retry-dead", json={},
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        assert retried.status_code == 200
        assert wait_until(lambda: lines.has("admin action") and lines.has('"/v1/courses"'), timeout=10)
    records = _json_lines(lines.join())
    requests_logged = [r for r in records if r["msg"] == "request"]
    assert {"method": "GET", "path": "/healthz", "status": 200} in [
        {k: r[k] for k in ("method", "path", "status")} for r in requests_logged]
    assert {"method": "GET", "path": "/v1/courses", "status": 401} in [
        {k: r[k] for k in ("method", "path", "status")} for r in requests_logged]
    assert not [r for r in records if "ann@example.test" in json.dumps(r)]
    (action,) = [r for r in records if r["msg"] == "admin action"]
    assert action["logger"] == "coursepipe.audit" and action["action"] == "outbox.retry_dead"
    assert action["break_glass"] is True


def test_audit_lines_are_written_at_log_level_warning(tmp_path):
    started, base = _serve(tmp_path, LOG_LEVEL="WARNING")
    with started as (proc, lines):
        assert wait_until(lambda: _up(base, proc), timeout=60)
        retried = requests.post(f"{base}/admin/outbox/retry-dead", json={"reason": "ann@example.test asked"},
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        assert retried.status_code == 200
        assert wait_until(lambda: lines.has("admin action"), timeout=10)
    records = _json_lines(lines.join())
    assert [r["action"] for r in records if r["msg"] == "admin action"] == ["outbox.retry_dead"]
    assert not [r for r in records if r["msg"] == "request"]  # INFO: below the level
    assert not [r for r in records if "ann@example.test" in json.dumps(r)]  # the reason stays in the audit log


def test_worker_processes_and_dramatiqs_main_process_log_json(tmp_path, redis_url, redis_namespace):
    with process(["worker", "--processes", "1", "--threads", "1"], tmp_path, REDIS_URL=redis_url,
                 REDIS_NAMESPACE=redis_namespace) as (proc, lines):
        assert wait_until(lambda: lines.has("Worker process is ready for action") or proc.poll() is not None,
                          timeout=90), lines.lines
        assert proc.poll() is None, lines.lines
    records = _json_lines(lines.join())
    loggers = {r["logger"] for r in records}
    assert "dramatiq.MainProcess" in loggers and "dramatiq.WorkerProcess(0)" in loggers, loggers


def test_the_scheduler_logs_json(tmp_path, redis_url, redis_namespace):
    with process(["scheduler"], tmp_path, REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace) as (proc, lines):
        assert wait_until(lambda: lines.has("coursepipe.scheduler") or proc.poll() is not None, timeout=90), \
            lines.lines
        assert proc.poll() is None, lines.lines
    records = _json_lines(lines.join())
    assert any(r["logger"] == "coursepipe.scheduler" for r in records)
