"""`dramatiq workers`, the command beside `coursepipe worker`: it starts our workers, not Dramatiq's defaults."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from db.enums import InboxSource, InboxStatus
from db.models import InboxEvent, Student
from tests.conftest import make_settings
from tests.netutil import wait_until
from tests.signing import platform_event
from workers import named_by_dramatiq

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(sys.executable).parent / "dramatiq")


@pytest.mark.parametrize("command", [
    [SCRIPT, "workers"],
    [sys.executable, "-m", "dramatiq", "workers", "--use-spawn"],
], ids=["script", "python-m-spawn"])
def test_dramatiq_workers_processes_stored_events(pg_database, redis_url, redis_namespace, command):
    """Before, `dramatiq workers` started Dramatiq's default broker with no actor declared: "ready for
    action", and nothing sent to our queues was ever processed."""
    from coursepipe.runtime import init_runtime, reset_runtime
    from tasks.inbox.store import store_event
    from workers.actors import enqueue_inbox

    settings = make_settings(pg_database.url, redis_url=redis_url, redis_namespace=redis_namespace)
    init_runtime(settings, db=pg_database)
    try:
        event = platform_event("student.upserted", {"student_id": "stu_entry", "name": "Ann Entry"})
        with pg_database.session_scope() as s:
            inbox_id = store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"],
                                   type=event["type"], payload=event, subject="student:stu_entry",
                                   occurred_at=None).id
        assert enqueue_inbox([inbox_id]) == 1
    finally:
        reset_runtime()

    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(DATABASE_URL=pg_database.url, REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace,
               PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([*command, "--processes", "1", "--threads", "1"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def processed() -> bool:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        with pg_database.session_scope() as s:
            return s.scalar(select(InboxEvent.status).where(InboxEvent.id == inbox_id)) == InboxStatus.PROCESSED

    try:
        assert wait_until(processed, timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    with pg_database.session_scope() as s:
        assert s.get(Student, "stu_entry").name == "Ann Entry"


@pytest.mark.parametrize(("argv", "named"), [
    (["/venv/bin/dramatiq", "workers", "-p", "2"], True),
    (["/usr/lib/python3/site-packages/dramatiq/__main__.py", "--threads", "4", "workers"], True),
    (["/venv/bin/dramatiq", "workers.app"], False),
    (["/venv/bin/dramatiq", "workers.prometheus", "workers"], False),  # `workers` as a module to import
    (["/venv/bin/dramatiq", "--version"], False),
    (["/venv/bin/coursepipe", "worker"], False),
    (["/venv/bin/pytest", "workers"], False),
    ([], False),
], ids=["script", "python-m", "workers.app", "prometheus", "version", "coursepipe", "pytest", "empty"])
def test_the_package_builds_the_runtime_only_when_dramatiq_names_it_as_the_broker(argv, named):
    assert named_by_dramatiq(argv) is named
