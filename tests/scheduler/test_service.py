"""The scheduler: two processes side by side act once per job and period (Redis lock, PostgreSQL
advisory lock), job_run makes a period fire once even during a hand-over, jobs only send messages."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from coursepipe.runtime import Runtime
from db.models import JobRun
from scheduler.service import (
    JOBS,
    Job,
    NotQueued,
    PostgresLeader,
    RedisLeader,
    SchedulerService,
    SingleProcess,
    claim_period,
    period_key,
    run_now,
)
from tests.conftest import make_settings

RUN_SECONDS = 5.5
FAST_JOBS = {"fast": Job("fast", "relay_outbox", 1, "every second"), "slow": Job("slow", "low_seat_scan", 2, "every 2 s")}


class Recorder:
    def __init__(self):
        self.sent: list[tuple[str, str, float]] = []
        self.lock = threading.Lock()

    def sender(self, who):
        def send(actor, *args, job_run=None):
            assert isinstance(job_run, int)  # each send names its job_run row
            with self.lock:
                self.sent.append((who, actor, time.time()))
            return True

        return send


def _runtime(database, **overrides):
    return Runtime(settings=make_settings(database.url, **overrides), db=database, broker=None, actors={})


def _side_by_side(runtime, leaderships, ttl=3.0):
    recorder = Recorder()
    services = [
        SchedulerService(runtime, jobs=FAST_JOBS, leadership=leadership, sender=recorder.sender(f"s{i}"),
                         identity=f"s{i}", leader_ttl_seconds=ttl)
        for i, leadership in enumerate(leaderships)
    ]
    started = time.time()
    for service in services:
        service.start()
    time.sleep(RUN_SECONDS)
    for service in services:
        service.shutdown(wait=True)  # a job in flight finishes (its job_run row and `fired` entry) before we look
    return services, recorder, time.time() - started


def _assert_once_per_period(database, services, recorder, elapsed):
    fired = [f for s in services for f in s.fired]
    assert len(fired) == len(set(fired)), f"a (job, period) fired twice: {Counter(fired).most_common(3)}"
    per_job = Counter(job for job, _ in fired)
    # one per period, none missed (a little slack at both ends of the run): at least the periods of the RUN_SECONDS
    # between the last start and the shutdown, at most those of the whole run (start-up and shutdown, which a slow
    # machine stretches, included)
    assert RUN_SECONDS - 1.5 <= per_job["fast"] <= elapsed + 1, (per_job, elapsed)
    assert RUN_SECONDS / 2 - 1.5 <= per_job["slow"] <= elapsed / 2 + 1, (per_job, elapsed)
    assert Counter(actor for _, actor, _ in recorder.sent) == {"relay_outbox": per_job["fast"],
                                                               "low_seat_scan": per_job["slow"]}
    # periods are consecutive for the fast job (one late tick on a loaded machine is tolerated)
    periods = sorted(int(p) for job, p in fired if job == "fast")
    assert periods[-1] - periods[0] + 1 - len(periods) <= 1, periods
    with database.session_scope() as s:
        rows = s.execute(select(JobRun.job, JobRun.period_key)).all()
    assert sorted(rows) == sorted(fired)


@pytest.mark.redis
@pytest.mark.postgres
def test_two_schedulers_with_a_redis_lock_fire_each_job_once_per_period(pg_database, redis_url, redis_namespace):
    runtime = _runtime(pg_database, redis_url=redis_url, redis_namespace=redis_namespace)
    key = f"{redis_namespace}:scheduler-leader"
    # a TTL longer than the run: a machine stalling for a few seconds must not hand leadership over mid-run (the
    # hand-over itself is test_redis_leadership_moves_when_the_leader_goes_away's)
    leaderships = [RedisLeader(redis_url, key=key, identity=f"s{i}", ttl_seconds=30) for i in range(2)]
    services, recorder, elapsed = _side_by_side(runtime, leaderships, ttl=30.0)
    _assert_once_per_period(pg_database, services, recorder, elapsed)
    assert len({who for who, _, _ in recorder.sent}) == 1, "both schedulers acted"


@pytest.mark.postgres
def test_two_schedulers_with_an_advisory_lock_fire_each_job_once_per_period(pg_database):
    runtime = _runtime(pg_database)
    leaderships = [PostgresLeader(pg_database.engine, name=f"test-leader-{id(pg_database)}") for _ in range(2)]
    services, recorder, elapsed = _side_by_side(runtime, leaderships)
    _assert_once_per_period(pg_database, services, recorder, elapsed)
    assert len({who for who, _, _ in recorder.sent}) == 1, "both schedulers acted"


def test_even_two_leaders_at_once_fire_a_period_once(database):
    """A hand-over where both believe they lead (or SQLite's single-process mode run twice): job_run decides."""
    runtime = _runtime(database)
    services, recorder, elapsed = _side_by_side(runtime, [SingleProcess(), SingleProcess()])
    _assert_once_per_period(database, services, recorder, elapsed)


def test_a_leader_remembers_a_bounded_number_of_the_periods_it_fired(database, monkeypatch):
    """`fired` grew by one tuple per fire for the life of the process (~30,000 a day)."""
    import scheduler.service as service_module

    monkeypatch.setattr(service_module, "FIRED_KEPT", 3)
    recorder = Recorder()
    service = SchedulerService(_runtime(database), jobs=FAST_JOBS, leadership=SingleProcess(),
                               sender=recorder.sender("s"), identity="s")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for second in range(10):
        assert service.fire("fast", start + timedelta(seconds=second))
    assert len(recorder.sent) == 10
    assert [period for _, period in service.fired] == [str(int(start.timestamp()) + s) for s in (7, 8, 9)]


@pytest.mark.redis
def test_redis_leadership_moves_when_the_leader_goes_away(redis_url, redis_namespace):
    key = f"{redis_namespace}:scheduler-leader"
    first = RedisLeader(redis_url, key=key, identity="first", ttl_seconds=1)
    second = RedisLeader(redis_url, key=key, identity="second", ttl_seconds=1)
    assert first.check() and not second.check()
    assert first.check(), "the leader renews its own lock"
    # the leader dies without releasing: its lock expires
    deadline = time.monotonic() + 5
    while not second.check():
        assert time.monotonic() < deadline, "leadership never moved"
        time.sleep(0.1)
    assert not first.check()
    second.release()
    assert first.check(), "a released lock is free at once"
    first.release()


@pytest.mark.postgres
def test_advisory_leadership_moves_when_the_leader_releases(pg_database):
    first = PostgresLeader(pg_database.engine, name="handover")
    second = PostgresLeader(pg_database.engine, name="handover")
    try:
        assert first.check() and not second.check()
        first.release()
        assert second.check() and not first.check()
    finally:
        first.release()
        second.release()


def test_claim_period_is_once_per_job_and_period(database):
    assert claim_period(database, job="sweep", period="100", runner="a")
    assert claim_period(database, job="sweep", period="100", runner="b") is None
    assert claim_period(database, job="sweep", period="101", runner="b")
    assert claim_period(database, job="relay", period="100", runner="b")


def test_period_keys_are_aligned_to_the_epoch():
    job = Job("j", "relay_outbox", 300, "")
    at = datetime(2026, 1, 1, 12, 4, 59, tzinfo=timezone.utc)
    assert period_key(job, at) == str(int(at.timestamp()) // 300)
    assert period_key(job, at.replace(minute=5, second=0)) != period_key(job, at)


def test_the_job_table_names_the_contract_jobs_and_only_sends(database):
    assert {"reminders", "low-seats", "sweep", "reconcile", "relay", "retry-waiting"} <= set(JOBS)
    sent = []
    runtime = _runtime(database)
    run_id = run_now(runtime, "reminders",
                     sender=lambda actor, *args, **kwargs: sent.append((actor, args, kwargs)) or True)  # queued
    with database.session_scope() as s:
        run = s.scalar(select(JobRun))
    assert run.id == run_id and sent == [("send_reminders", (), {"job_run": run.id})]
    assert run.job == "reminders" and run.finished_at is None  # sent, not yet run


def test_a_job_actor_records_on_its_run_that_it_finished_and_what_it_did(database):
    from workers.job_runs import finish_job_run

    run_id = claim_period(database, job="reminders", period="7", runner="a")
    finish_job_run(database, run_id, {"reminders_queued": 3})
    finish_job_run(database, None, {"ignored": True})  # a message not sent by the scheduler
    with database.session_scope() as s:
        run = s.get(JobRun, run_id)
        assert run.finished_at is not None and run.result == {"reminders_queued": 3}


def test_finishing_a_run_that_is_gone_records_nothing_and_says_so(database, caplog):
    from workers.job_runs import finish_job_run

    run_id = claim_period(database, job="reminders", period="8", runner="a")
    finish_job_run(database, run_id + 1000, {"reminders_queued": 1})  # pruned meanwhile
    assert "no job_run row has that id" in caplog.text
    with database.session_scope() as s:
        assert s.get(JobRun, run_id).finished_at is None
        assert s.scalar(select(func.count()).select_from(JobRun)) == 1


def test_the_real_scheduler_registers_timezone_aware_jobs_with_ids(database):
    service = SchedulerService(_runtime(database), leadership=SingleProcess(), sender=lambda *a: True)
    jobs = {j.id: j for j in service.scheduler.get_jobs()}
    assert set(JOBS) <= set(jobs)
    for name in JOBS:
        job = jobs[name]
        assert job.coalesce and job.misfire_grace_time >= 1 and job.max_instances == 1
        assert job.trigger.timezone == timezone.utc and job.trigger.interval.total_seconds() == JOBS[name].seconds


def test_a_run_the_broker_refused_is_not_the_last_result(database):
    """A refused `coursepipe jobs run reconcile` is finished with an `error`: taken as the last run, reconcile lost
    the cursor its last real run had saved, and the dashboard showed blanks."""
    from workers import job_runs

    ran = claim_period(database, job="reconcile", period="1", runner="test")
    job_runs.finish_job_run(database, ran, {"checked": 5, "cursor": "evt_9"})
    runtime = _runtime(database)
    with pytest.raises(NotQueued):
        run_now(runtime, "reconcile", sender=lambda *args, **kwargs: False)
    last, result = job_runs.last_result(database, "reconcile")
    assert last.id == ran and result == {"checked": 5, "cursor": "evt_9"}
