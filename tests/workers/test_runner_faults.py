"""The inbox under stress and faults: concurrent redeliveries, Redis down, a worker SIGKILLed mid-transaction."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from tests import inbox_api
from db.enums import InboxStatus
from db.models import AlertLog, InboxEvent
from tests.conftest import drain, make_settings
from tests.netutil import free_port, http_server, wait_until
from tests.signing import platform_event, platform_headers

ROOT = Path(__file__).resolve().parents[2]


def effects(database) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(AlertLog).where(AlertLog.kind == "test"))


def statuses(database) -> list[InboxStatus]:
    with database.session_scope() as s:
        return list(s.scalars(select(InboxEvent.status).order_by(InboxEvent.id)))


def post(url, event):
    body = json.dumps(event).encode()
    return requests.post(f"{url}/webhooks/platform", data=body, headers=platform_headers(body), timeout=10)


def test_fifty_concurrent_deliveries_of_one_event_store_one_row_and_process_once(app, runtime, worker):
    event = platform_event("test.effect", {"n": 1})
    with http_server(app) as url, ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: post(url, event), range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 49
    drain(runtime)
    assert statuses(runtime.db) == [InboxStatus.PROCESSED]
    assert effects(runtime.db) == 1


# --------------------------------------------------------------------------- Redis


@pytest.fixture
def own_redis(redis_url):
    """A Redis server of this test's own, so it can be stopped and started again."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=port)
        assert wait_until(lambda: _pings(client), timeout=10)
        return proc

    state = {"proc": start()}

    def stop():
        state["proc"].kill()
        state["proc"].wait(timeout=10)

    def restart():
        state["proc"] = start()

    yield type("OwnRedis", (), {"url": f"redis://127.0.0.1:{port}/0", "stop": staticmethod(stop),
                                "start": staticmethod(restart)})
    state["proc"].kill()
    state["proc"].wait(timeout=10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


@pytest.fixture
def redis_runtime(pg_database, own_redis, redis_namespace):
    from coursepipe.runtime import init_runtime, reset_runtime

    settings = make_settings(pg_database.url, redis_url=own_redis.url, redis_namespace=redis_namespace)
    rt = init_runtime(settings, db=pg_database, handlers=inbox_api.HANDLERS)
    yield rt
    reset_runtime()


def test_redis_down_while_events_arrive_all_acknowledged_then_processed_once(redis_runtime, own_redis):
    import dramatiq

    from ingress.app import create_app
    from workers.actors import resend_stale

    app = create_app(redis_runtime.settings, runtime=redis_runtime)
    events = [platform_event("test.effect", {"n": n}) for n in range(20)]
    with http_server(app) as url:
        own_redis.stop()
        responses = [post(url, e) for e in events]
        assert [r.status_code for r in responses] == [200] * 20
        assert all(r.json() == {"received": True, "duplicate": False} for r in responses)
        # redeliveries while Redis is down are still answered as duplicates
        assert post(url, events[0]).json()["duplicate"] is True
    assert statuses(redis_runtime.db) == [InboxStatus.PENDING] * 20
    own_redis.start()
    assert resend_stale(0) == 20  # the scheduler's sweeper, run now
    worker = dramatiq.Worker(redis_runtime.broker, worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        assert wait_until(lambda: statuses(redis_runtime.db) == [InboxStatus.PROCESSED] * 20, timeout=60)
    finally:
        worker.stop()
    assert effects(redis_runtime.db) == 20


def test_worker_sigkilled_mid_transaction_leaves_no_partial_effect_and_is_processed_later(
        redis_runtime, tmp_path):
    from tasks.inbox.store import store_event
    from db.enums import InboxSource
    from workers.actors import enqueue_inbox, resend_stale

    marker = tmp_path / "in-handler"
    event = platform_event("test.slow", {})
    with redis_runtime.db.session_scope() as s:
        inbox_id = store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"], type="test.slow",
                               payload=event, subject=None, occurred_at=None).id
    enqueue_inbox([inbox_id])

    env = {**os.environ, "DATABASE_URL": redis_runtime.settings.database_url,
           "REDIS_URL": redis_runtime.settings.redis_url, "REDIS_NAMESPACE": redis_runtime.settings.redis_namespace,
           "COURSEPIPE_TEST_MARKER": str(marker), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dramatiq", "tests.workers.worker_app", "--processes", "1", "--threads", "1"]

    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert wait_until(marker.exists, timeout=60), "the worker never entered the handler"
        # inside the handler's transaction: the effect is written but not committed
        assert effects(redis_runtime.db) == 0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert effects(redis_runtime.db) == 0
    assert statuses(redis_runtime.db) == [InboxStatus.PENDING]

    Path(str(marker) + ".done").write_text("ok")  # the next run passes straight through
    assert wait_until(lambda: resend_stale(0) == 1, timeout=30)  # its lock is gone once PostgreSQL notices
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_until(lambda: statuses(redis_runtime.db) == [InboxStatus.PROCESSED], timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert effects(redis_runtime.db) == 1


def test_no_lost_wake_up_when_the_provider_commits_while_the_waiter_decides(pg_database):
    """The waiter saw nothing; the provider commits and wakes (nobody is parked yet); the waiter must
    not then park forever: it looks again under the key's lock and is processed."""
    from db.enums import InboxSource
    from tests import inbox_api as inbox_core
    from tests.workers.support import GATES

    def store(type_, data):
        event = platform_event(type_, data)
        with pg_database.session_scope() as s:
            return event["id"], inbox_core.store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"],
                                                       type=type_, payload=event, subject=None,
                                                       occurred_at=None).id

    waiter_event, waiter = store("test.wait_gated", {"needs": "thing:race"})
    _, provider = store("test.provide", {"key": "thing:race"})
    gate = GATES[waiter_event] = {"checked": threading.Event(), "go": threading.Event()}
    results = {}

    def run_waiter():
        with pg_database.session_scope() as s:
            results["waiter"] = inbox_core.process_event(session=s, inbox_id=waiter)

    thread = threading.Thread(target=run_waiter)
    thread.start()
    assert gate["checked"].wait(timeout=30)
    with pg_database.session_scope() as s:  # the provider commits while the waiter is deciding
        results["provider"] = inbox_core.process_event(session=s, inbox_id=provider)
    gate["go"].set()
    thread.join(timeout=30)
    assert results["provider"].outcome.value == "processed"
    assert results["waiter"].outcome.value == "processed"
    assert statuses(pg_database) == [InboxStatus.PROCESSED, InboxStatus.PROCESSED]


def test_worker_sigkilled_inside_the_marked_purchase_fast_path_leaves_nothing_and_fulfils_once_later(
        redis_runtime):
    """The fast path's own transaction (a message the ingress marked as a purchase) killed while it
    holds the claimed row and waits for the payment's lock: nothing of it stays, the purchase is
    fulfilled once by the next run."""
    import sqlalchemy as sa

    from tasks.inbox.context import lock_key
    from tests import factories
    from tests.tasks.purchases.payments_support import checkout, store
    from workers.actors import enqueue_inbox, resend_stale

    db = redis_runtime.db
    with db.session_scope() as s:
        factories.program(s, code="SFZ", steps=3)
    inbox_id = store(db, checkout(cs="cs_k", pi="pi_k", student="stu_k"))
    enqueue_inbox([inbox_id], purchase=True)

    def count(sql: str) -> int:
        with db.engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar()

    here = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"

    def waiting_for_our_lock() -> bool:
        return count(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND {here}") == 1

    env = {**os.environ, "DATABASE_URL": redis_runtime.settings.database_url,
           "REDIS_URL": redis_runtime.settings.redis_url, "REDIS_NAMESPACE": redis_runtime.settings.redis_namespace,
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "dramatiq", "tests.workers.worker_app", "--processes", "1", "--threads", "1"]
    holder = db.engine.connect()  # holds the payment's advisory lock: the fast path stops inside its transaction
    holder.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("payment:pi_k")})
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_until(waiting_for_our_lock, timeout=60), "the worker never reached the lock"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        holder.rollback()
        holder.close()
    # PostgreSQL ends the dead worker's transaction when it notices the connection is gone
    assert wait_until(lambda: count(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND {here}") == 0,
                      timeout=30)
    assert count("SELECT count(*) FROM student WHERE id = 'stu_k'") == 0
    assert count("SELECT count(*) FROM student_course_enrollment") == 0
    assert statuses(db) == [InboxStatus.PENDING]

    assert wait_until(lambda: resend_stale(0) == 1, timeout=30)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert wait_until(lambda: statuses(db) == [InboxStatus.PROCESSED], timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert count("SELECT count(*) FROM student_course_enrollment") == 1
    assert count("SELECT count(*) FROM student_course_progress") == 3
    assert count("SELECT count(*) FROM outbox_message WHERE topic = 'enrollment.created'") == 1
