"""The scheduler (the `coursepipe scheduler` process, or a thread inside `serve`): jobs only send messages.

Several scheduler processes may run at once; two guards make each job act once per period:
- a leader lock — a Redis key taken with SET NX PX and renewed by the holder (when REDIS_URL is
  set), otherwise a PostgreSQL session advisory lock, otherwise (SQLite: one process by nature)
  nobody else to race — only the leader fires;
- a `job_run` row per (job, period) with a unique key: during a leadership hand-over, when the old
  and the new leader may both believe they lead for a moment, the second insert loses and sends nothing.

Triggers are interval triggers aligned to the Unix epoch in UTC, so every process computes the same
fire times and the period key of a fire is `floor(unix time / interval)`.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import zlib
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import func, select

from db.types import utcnow
from workers.actors import send
from workers.job_runs import claim_period, finish_job_run, prune_job_runs
from workers.runtime import Runtime

log = logging.getLogger("coursepipe.scheduler")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LEADER_TTL_SECONDS = 15
FIRED_KEPT = 1000  # (job, period) pairs a service remembers having sent
LEADER_LOCK_NAME = "coursepipe:scheduler-leader"


@dataclass(frozen=True)
class Job:
    name: str
    actor: str
    seconds: int
    description: str
    args: tuple = ()


# The scheduler's jobs (`coursepipe jobs list`). Each sends one message.
JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("sweep", "sweep_inbox", 10, "re-send inbox events that stayed pending (lost or unsent messages)"),
        Job("retry-waiting", "retry_waiting", 60, "retry parked events in case what they wait for came another way"),
        Job("relay", "relay_outbox", 5, "deliver due outbox messages (mail, platform events); free stuck ones"),
        Job("low-seats", "low_seat_scan", 300, "alert admins on course-step classes at or under LOW_SEAT_THRESHOLD"),
        Job("reminders", "send_reminders", 3600, "remind students of unbooked steps (REMINDERS_ENABLED)"),
        Job("reconcile", "reconcile", 900, "store Stripe events of the last 30 days no webhook delivered (Events API)"),
        Job("new-steps", "provide_new_steps", 60,
            "give a step added in the last 15 min to enrollments fulfilled meanwhile without it"),
        Job("refunds", "settle_refunds", 300, "finish admin refunds left pending 10 min or more (ask Stripe, then retry)"),
        Job("publishing", "resume_publishing", 300,
            "publish again the courses and packages whose Stripe calls stayed pending 10 min or more"),
        Job("retention", "prune_retention", 3600,
            "prune raw payloads, mail bodies and ended messages' delivery moves older than RETENTION_DAYS"),
    )
}


def runner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def period_key(job: Job, now: datetime) -> str:
    return str(int(now.timestamp()) // job.seconds)


# --------------------------------------------------------------------------- leadership


class Leadership:
    """Base: who may act. `check()` acquires or renews and answers whether we lead now."""

    kind = "single"

    def check(self) -> bool:
        return True

    def release(self) -> None:
        pass


class SingleProcess(Leadership):
    """SQLite / embedded: one process owns the database file, nobody to elect."""


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLeader(Leadership):
    """SET key me NX PX ttl to acquire; a compare-and-pexpire script to renew; compare-and-del to release."""

    kind = "redis"

    def __init__(self, url: str, *, key: str, identity: str, ttl_seconds: float = LEADER_TTL_SECONDS) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.key = key
        self.identity = identity
        self.ttl_ms = int(ttl_seconds * 1000)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self.leading = False

    def check(self) -> bool:
        try:
            if self.leading and self._renew(keys=[self.key], args=[self.identity, self.ttl_ms]):
                return True
            self.leading = bool(self.client.set(self.key, self.identity, nx=True, px=self.ttl_ms))
        except Exception as exc:  # Redis unreachable: step down; the lock expires for everyone alike
            log.warning("scheduler leader lock unavailable: %s", exc)
            self.leading = False
        return self.leading

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.identity])
        except Exception:
            pass
        self.leading = False


class PostgresLeader(Leadership):
    """A session-level advisory lock held on a dedicated connection for as long as we lead."""

    kind = "postgres"

    def __init__(self, engine, *, name: str = LEADER_LOCK_NAME) -> None:
        self.engine = engine
        self.lock_id = zlib.crc32(name.encode())
        self.connection = None
        self.leading = False

    def check(self) -> bool:
        try:
            if self.connection is None:
                self.connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if self.leading:
                self.connection.execute(select(1))  # still connected means still holding
                return True
            self.leading = bool(self.connection.execute(select(func.pg_try_advisory_lock(self.lock_id))).scalar())
        except Exception as exc:
            log.warning("scheduler advisory lock unavailable: %s", exc)
            self._drop()
        return self.leading

    def _drop(self) -> None:
        self.leading = False
        if self.connection is not None:
            try:
                self.connection.invalidate()
                self.connection.close()
            except Exception:
                pass
            self.connection = None

    def release(self) -> None:
        if self.connection is not None and self.leading:
            try:
                self.connection.execute(select(func.pg_advisory_unlock(self.lock_id)))
            except Exception:
                pass
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                pass
        self.connection = None
        self.leading = False


def choose_leadership(runtime: Runtime, identity: str) -> Leadership:
    settings = runtime.settings
    if settings.redis_url:
        return RedisLeader(settings.redis_url, key=f"{settings.redis_namespace}:scheduler-leader", identity=identity)
    if runtime.db.dialect == "postgresql":
        return PostgresLeader(runtime.db.engine)
    return SingleProcess()


class NotQueued(Exception):
    """The broker refused a job's message (Redis unreachable): the job did not run."""


def run_now(runtime: Runtime, name: str, *, sender: Callable[..., bool] | None = None) -> int:
    """Fire one job now, once, outside its schedule (`coursepipe jobs run NAME`); returns its `job_run` id.
    NotQueued when the broker refused its message: its row is then finished with that error, not left running."""
    job = JOBS[name]
    stamp = utcnow().strftime("%Y%m%dT%H%M%S.%f")
    run_id = claim_period(runtime.db, job=name, period=f"manual:{stamp}", runner=f"cli:{runner_id()}")
    if not (sender or send)(job.actor, *job.args, job_run=run_id):
        finish_job_run(runtime.db, run_id, {"error": "not queued: the broker refused the message"})
        raise NotQueued(f"job {name}: {job.actor} was not queued (the broker refused it; is Redis reachable?)")
    return run_id


# --------------------------------------------------------------------------- the service


class SchedulerService:
    """APScheduler wired to leadership and job_run; `jobs`, `leadership` and `sender` are injectable for tests."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        jobs: dict[str, Job] | None = None,
        leadership: Leadership | None = None,
        sender: Callable[..., bool] | None = None,
        identity: str | None = None,
        leader_ttl_seconds: float = LEADER_TTL_SECONDS,
    ) -> None:
        self.runtime = runtime
        self.jobs = dict(JOBS if jobs is None else jobs)
        self.identity = identity or runner_id()
        self.leadership = leadership or choose_leadership(runtime, self.identity)
        self.sender = sender or send
        self.leader_ttl_seconds = leader_ttl_seconds
        # the latest (job, period) this process sent, for tests and logs; bounded: a leader fires ~30,000 a day
        self.fired: deque[tuple[str, str]] = deque(maxlen=FIRED_KEPT)
        self._was_leader = False
        self._lock = threading.Lock()
        # a line per tick every few seconds is noise; failures still log at WARNING/ERROR
        logging.getLogger("apscheduler.executors.default").setLevel(logging.WARNING)
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self._add_jobs()

    def _add_jobs(self) -> None:
        for job in self.jobs.values():
            self.scheduler.add_job(
                self.fire, IntervalTrigger(seconds=job.seconds, start_date=EPOCH, timezone=timezone.utc),
                args=[job.name], id=job.name, name=job.name,
                coalesce=True, misfire_grace_time=max(1, job.seconds // 2), max_instances=1, replace_existing=True,
            )
        heartbeat = max(1, int(self.leader_ttl_seconds // 3))
        self.scheduler.add_job(
            self.heartbeat, IntervalTrigger(seconds=heartbeat, timezone=timezone.utc), id="leader-heartbeat",
            name="leader-heartbeat", coalesce=True, misfire_grace_time=heartbeat, max_instances=1,
            replace_existing=True, next_run_time=utcnow(),
        )
        self.scheduler.add_job(
            self.prune, IntervalTrigger(hours=1, start_date=EPOCH, timezone=timezone.utc), id="prune-job-runs",
            name="prune-job-runs", coalesce=True, misfire_grace_time=600, max_instances=1, replace_existing=True,
        )

    def is_leader(self) -> bool:
        with self._lock:
            leading = self.leadership.check()
        if leading != self._was_leader:
            log.info("scheduler %s %s leadership (%s)", self.identity, "took" if leading else "lost",
                     self.leadership.kind)
            self._was_leader = leading
        return leading

    def heartbeat(self) -> None:
        self.is_leader()

    def fire(self, name: str, now: datetime | None = None) -> bool:
        """One scheduled tick: act only as leader and only once per (job, period)."""
        job = self.jobs[name]
        if not self.is_leader():
            return False
        period = period_key(job, now or utcnow())
        try:
            run_id = claim_period(self.runtime.db, job=name, period=period, runner=self.identity)
        except Exception as exc:
            log.warning("job %s: could not record its run (%s); not sending", name, exc)
            return False
        if run_id is None:
            return False
        self.fired.append((name, period))
        self.sender(job.actor, *job.args, job_run=run_id)
        return True

    def prune(self) -> None:
        if self.is_leader():
            try:
                prune_job_runs(self.runtime.db)
            except Exception as exc:
                log.warning("could not prune job_run: %s", exc)

    def start(self) -> "SchedulerService":
        log.info("scheduler %s starting with jobs %s (%s leadership)", self.identity, sorted(self.jobs),
                 self.leadership.kind)
        self.scheduler.start()
        return self

    def shutdown(self, wait: bool = False) -> None:
        try:
            if self.scheduler.running:
                self.scheduler.shutdown(wait=wait)
        finally:
            self.leadership.release()


def start_background_scheduler(runtime: Runtime) -> BackgroundScheduler:
    """The scheduler thread of `coursepipe serve`. `.shutdown()` on the result also releases leadership."""
    service = SchedulerService(runtime).start()
    service.scheduler.shutdown = _releasing(service.scheduler.shutdown, service.leadership)  # type: ignore[method-assign]
    return service.scheduler


def _releasing(shutdown, leadership: Leadership):
    def wrapped(*args, **kwargs):
        try:
            return shutdown(*args, **kwargs)
        finally:
            leadership.release()

    return wrapped


def run_blocking_scheduler(runtime: Runtime) -> None:
    """`coursepipe scheduler`: runs until SIGTERM/SIGINT, then hands leadership over at once.

    The signals are blocked in every thread and taken synchronously by the main thread (`sigwait`), which
    then stops the scheduler: no handler runs in the middle of the main thread's own work. (A shutdown, or
    even an event's `set`, inside a handler could wait on a lock the interrupted main thread holds.)"""
    import signal

    stop_signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # the scheduler's threads inherit it
    service = SchedulerService(runtime)  # its jobs run on the scheduler's own threads
    try:
        service.start()
        signal.sigwait(stop_signals)  # one sent while starting waits, pending, until here
    finally:
        service.shutdown(wait=False)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
