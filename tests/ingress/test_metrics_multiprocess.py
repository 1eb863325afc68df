"""Multi-process mode (several gunicorn workers): with PROMETHEUS_MULTIPROC_DIR set, /metrics in any
process sums the counters of every process. Each process here is a real interpreter (the mode is
chosen when prometheus_client is first imported)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from db.migrate import upgrade
from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
from coursepipe.runtime import init_runtime
from coursepipe.settings import Settings
from ingress.app import create_app
from tests.signing import platform_event, platform_headers

settings = Settings.from_env()
app = create_app(settings, runtime=init_runtime(settings))
client = app.test_client()
body = json.dumps(platform_event("student.upserted", {"student_id": sys.argv[1], "email": "a@example.test",
                                                       "name": "A", "timezone": "UTC"})).encode()
assert client.post("/webhooks/platform", data=body, headers=platform_headers(body)).status_code == 200
if sys.argv[2] == "scrape":
    sys.stdout.write(client.get("/metrics").get_data(as_text=True))
"""


def test_counters_of_every_process_are_summed(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    url = f"sqlite:///{tmp_path / 'mp.db'}"
    upgrade(url)
    env = {**os.environ, "DATABASE_URL": url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "PLATFORM_WEBHOOK_SECRET": PLATFORM_SECRET, "ADMIN_TOKEN": ADMIN_TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),  # not there yet: created on first use
           "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    for n, mode in ((1, "post"), (2, "post"), (3, "scrape")):
        result = subprocess.run([sys.executable, "-c", SCRIPT, f"stu_mp_{n}", mode], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(result.stdout) for s in family.samples}
    key = ("coursepipe_events_received_total", (("source", "platform"), ("type", "student.upserted")))
    assert samples[key] == 3
    assert samples[("coursepipe_inbox_events", (("status", "pending"),))] == 3  # stored; no worker ran here
    assert len(list((tmp_path / "prom").glob("counter_*.db"))) == 3
