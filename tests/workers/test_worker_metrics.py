"""`dramatiq workers.prometheus`: real worker processes on Redis export Dramatiq's metrics and ours on
the middleware's HTTP port (the production topology of docs/runbook.md, "Metrics")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from db.enums import InboxSource
from db.migrate import upgrade
from tasks.inbox.store import store_event
from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET, make_settings
from tests.workers.test_runner_faults import free_port

ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_worker_processes_export_dramatiq_and_coursepipe_metrics(tmp_path, redis_url, redis_namespace):
    from coursepipe.runtime import init_runtime, reset_runtime

    url = f"sqlite:///{tmp_path / 'w.db'}"
    upgrade(url)
    port, prom_dir = free_port(), tmp_path / "prom"
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "REDIS_NAMESPACE": redis_namespace,
           "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET, "PLATFORM_WEBHOOK_SECRET": PLATFORM_SECRET,
           "ADMIN_TOKEN": ADMIN_TOKEN, "dramatiq_prom_db": str(prom_dir), "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
           "dramatiq_prom_host": "127.0.0.1", "dramatiq_prom_port": str(port), "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "workers.prometheus", "--processes", "1", "--threads", "2"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    runtime = init_runtime(make_settings(url, redis_url=redis_url, redis_namespace=redis_namespace))
    try:
        with runtime.db.session_scope() as s:
            stored = store_event(session=s, source=InboxSource.PLATFORM, event_id="pev_wm_1", type="no.handler",
                                 payload={}, subject=None, occurred_at=None)
        runtime.actors["process_inbox_event"].send(stored.id)
        key = ("coursepipe_events_processed_total",
               (("outcome", "ignored"), ("source", "platform"), ("type", "other")))
        # Dramatiq counts the message after the actor returns: a scrape may see ours first
        dramatiq_key = ("dramatiq_messages_total", (("actor_name", "process_inbox_event"), ("queue_name", "inbox")))
        deadline, samples = time.monotonic() + 30, {}
        while time.monotonic() < deadline and (samples.get(key) != 1 or dramatiq_key not in samples):
            try:
                samples = _samples(requests.get(f"http://127.0.0.1:{port}/", timeout=2).text)
            except requests.ConnectionError:
                pass  # the exposition server is still starting
            time.sleep(0.2)
        assert samples.get(key) == 1, sorted(k[0] for k in samples)[:20]
        assert samples[("coursepipe_event_processing_seconds_count",
                        (("source", "platform"), ("type", "other")))] == 1
        assert samples[dramatiq_key] == 1
    finally:
        runtime.broker.close()
        reset_runtime()
        os.killpg(worker.pid, signal.SIGINT)  # the worker's own process group: main, worker and fork processes
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        time.sleep(0.2)
        try:  # the exposition fork may outlive the main process: it is in the same group
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
