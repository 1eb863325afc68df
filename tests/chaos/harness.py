"""A real stack for fault injection: own Redis server, gunicorn ingress, Dramatiq worker processes,
PostgreSQL; a sender that retries until acknowledged (as Stripe and the platform do); fault injectors.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests
import sqlalchemy as sa

from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET
from tests.netutil import free_port, wait_until
from tests.signing import platform_headers, stripe_headers

ROOT = Path(__file__).resolve().parents[2]
APP_NAME = "coursepipe-chaos"  # the stack's connections, so a fault can terminate them and no others


@dataclass
class Stack:
    database_url: str
    tmp: Path
    namespace: str
    redis_port: int = field(default_factory=free_port)
    ingress_port: int = field(default_factory=free_port)
    extra_env: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ processes

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def env(self) -> dict:
        env = {**os.environ, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
               "REDIS_NAMESPACE": self.namespace, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
               "PLATFORM_WEBHOOK_SECRET": PLATFORM_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN,
               "PYTHONPATH": str(ROOT), "LOG_LEVEL": "WARNING", "PGAPPNAME": APP_NAME}
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, env=self.env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_redis(self) -> None:
        # The port is already in every process's REDIS_URL. While Redis is down, a client's reconnect can
        # hold it for an instant as the local port of an outgoing connection, and redis-server then exits
        # ("Address already in use"): start it again, bounded.
        client = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 20
        while True:
            proc = self._spawn("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"])
            if wait_until(lambda: _pings(client) or proc.poll() is not None, timeout=10) and _pings(client):
                return
            assert proc.poll() is not None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.2)

    def stop_redis(self) -> None:
        self._kill("redis", signal.SIGKILL)

    def flushall(self) -> None:
        redis.Redis(port=self.redis_port).flushall()

    def start_ingress(self, workers: int = 2) -> None:
        self._spawn("ingress", [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                                "--bind", f"127.0.0.1:{self.ingress_port}", "--workers", str(workers),
                                "--log-level", "warning", "ingress.wsgi:app"])
        assert wait_until(self._ingress_up, timeout=30), "ingress did not start"

    def _ingress_up(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def ingress_worker_pids(self) -> list[int]:
        parent = self.procs["ingress"].pid
        out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def start_worker(self, processes: int = 1, threads: int = 4, name: str = "worker") -> None:
        self._spawn(name, [sys.executable, "-m", "dramatiq", "workers.app", "--processes", str(processes),
                           "--threads", str(threads)])

    def worker_child_pids(self, name: str = "worker") -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.procs[name].pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def _kill(self, name: str, sig: int) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def kill_worker(self, name: str = "worker") -> None:
        self._kill(name, signal.SIGKILL)

    def stop(self) -> None:
        for name in list(self.procs):
            self._kill(name, signal.SIGTERM if name != "redis" else signal.SIGKILL)

    # ------------------------------------------------------------------ database faults

    def terminate_backends(self) -> int:
        """pg_terminate_backend on every connection the stack's processes hold (not the test's own)."""
        engine = sa.create_engine(self.database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            n = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :app"), {"app": APP_NAME}).scalar()
        engine.dispose()
        return int(n or 0)

    # ------------------------------------------------------------------ senders

    def post_stripe(self, event: dict, timeout: float = 60) -> dict:
        body = json.dumps(event)
        return self._post_until_acknowledged("/webhooks/stripe", body.encode(), lambda: stripe_headers(body),
                                             timeout)

    def post_platform(self, event: dict, timeout: float = 60) -> dict:
        body = json.dumps(event).encode()
        return self._post_until_acknowledged("/webhooks/platform", body, lambda: platform_headers(body), timeout)

    def _post_until_acknowledged(self, path: str, body: bytes, headers, timeout: float) -> dict:
        """Like Stripe: anything but a 2xx is retried (fresh signature each time) until acknowledged."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                response = requests.post(self.url + path, data=body, headers=headers(), timeout=10)
                if response.status_code == 200:
                    return response.json()
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    raise AssertionError(f"refused: {response.status_code} {response.text}")
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never acknowledged")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False
