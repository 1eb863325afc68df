"""Two real `coursepipe scheduler` processes side by side (Redis leader lock, PostgreSQL job_run)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from sqlalchemy import select

from db.models import JobRun

CLI = [sys.executable, "-m", "coursepipe.cli", "scheduler"]
RUN_SECONDS = 11
STARTUP_LIMIT_SECONDS = 60


def _exits(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether `proc` exits within `seconds`; if not, it is made to dump its threads' stacks and is killed."""
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return False


@pytest.mark.redis
@pytest.mark.postgres
def test_two_scheduler_processes_fire_each_period_once(pg_database, redis_url, redis_namespace):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=pg_database.url, REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace,
               PYTHONFAULTHANDLER="1")  # SIGABRT dumps every thread's stack: what a hung process was doing
    procs = [subprocess.Popen(CLI, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs: list[list[str]] = [[], []]
    readers = [threading.Thread(target=lambda p=p, lines=lines: lines.extend(p.stderr), daemon=True)
               for p, lines in zip(procs, errs)]
    for reader in readers:
        reader.start()
    try:
        # the window starts once a process has started its jobs (start-up is slow on a loaded machine)
        deadline = time.monotonic() + STARTUP_LIMIT_SECONDS
        while not any("starting with jobs" in line for lines in errs for line in lines):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), errs
            time.sleep(0.05)
        started = time.monotonic()
        time.sleep(RUN_SECONDS)
        assert all(p.poll() is None for p in procs), errs
    finally:
        stopped = time.monotonic()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        hung = [i for i, p in enumerate(procs) if not _exits(p, 60)]
        for reader in readers:
            reader.join(timeout=10)
    assert not hung, [errs[i][-60:] for i in hung]  # the end of a hung one's stderr holds its threads' stacks
    assert all(p.returncode == 0 for p in procs), [lines[-20:] for lines in errs]
    with pg_database.session_scope() as s:
        rows = s.execute(select(JobRun.job, JobRun.period_key, JobRun.runner)).all()
    per_job = Counter(job for job, _, _ in rows)
    assert len({(job, period) for job, period, _ in rows}) == len(rows)  # unique by construction; asserted anyway
    # relay every 5 s, sweep every 10 s: one run per period, from one process only
    periods = int(stopped - started) + 1  # a period may end in the moment between the check and the signal
    assert 1 <= per_job["relay"] <= periods // 5 + 1 and 1 <= per_job["sweep"] <= periods // 10 + 1, per_job
    assert len({runner for _, _, runner in rows}) == 1, "both processes acted"
    took = [line for lines in errs for line in lines if "took leadership" in line]
    assert len(took) == 1, took


@pytest.mark.redis
@pytest.mark.postgres
def test_a_signal_while_the_scheduler_starts_ends_it_cleanly(pg_database, redis_url, redis_namespace):
    """SIGTERM the moment the scheduler says it starts (its first jobs being handed to their threads): it
    exits 0 within seconds, writing nothing but JSON lines (a shutdown inside the signal handler deadlocked)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATABASE_URL=pg_database.url, REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace)
    for _ in range(3):
        proc = subprocess.Popen(CLI, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + STARTUP_LIMIT_SECONDS
        while not any("starting with jobs" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, lines
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0, lines
        finally:
            proc.kill()
        reader.join(timeout=10)
        assert all(line.startswith("{") for line in lines), lines
