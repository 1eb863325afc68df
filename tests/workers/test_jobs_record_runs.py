"""Each scheduled job's actor records on its job_run row that it finished, and what it did."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import JobRun
from scheduler.service import claim_period
from workers import actors, jobs

RUNS = [
    ("sweep", actors.sweep_inbox, {"resent": 0}),
    ("retry-waiting", actors.retry_waiting, {"requeued": 0, "expired": 0}),
    ("relay", jobs.relay_outbox, {"claimed": 0, "delivered": 0, "handed_back": 0}),
    ("low-seats", jobs.low_seat_scan, {"alerts_raised": 0}),
    ("reminders", jobs.send_reminders, {"reminders_queued": 0}),
    ("reconcile", jobs.reconcile, {"skipped": "STRIPE_API_KEY is not set"}),
    ("new-steps", jobs.provide_new_steps, {"provided": 0}),
    ("refunds", jobs.settle_refunds, {"succeeded": 0, "failed": 0, "pending": 0, "errors": 0}),
    ("publishing", jobs.resume_publishing, {"resumed": 0}),
]


@pytest.mark.parametrize("name, run, result", RUNS, ids=[r[0] for r in RUNS])
def test_a_job_actor_finishes_its_run_and_a_message_without_one_records_nothing(runtime, name, run, result):
    run_id = claim_period(runtime.db, job=name, period="1", runner="test")
    run(job_run=run_id)
    run()  # sent by something other than the scheduler (a relay chaining itself): no row to finish
    with runtime.db.session_scope() as s:
        rows = s.scalars(select(JobRun)).all()
        assert len(rows) == 1 and rows[0].finished_at is not None and rows[0].result == result


def _reminders_run_raising(runtime, monkeypatch, error: BaseException, period: str = "2") -> JobRun:
    """A `reminders` run whose work raises `error`; its row once the actor is done."""
    from tasks.enrollments import reminders

    def raising(**_kwargs):
        raise error

    monkeypatch.setattr(reminders, "send_reminders", raising)
    run_id = claim_period(runtime.db, job="reminders", period=period, runner="test")
    with pytest.raises(type(error)):
        jobs.send_reminders(job_run=run_id)
    with runtime.db.session_scope() as s:
        return s.get(JobRun, run_id)


def test_a_job_actor_that_fails_records_its_error_and_jobs_list_shows_it(runtime, monkeypatch):
    """A failed run left its row unfinished: `jobs list` showed it as one still running, for good."""
    from workers import job_runs

    done = claim_period(runtime.db, job="reminders", period="1", runner="test")
    jobs.send_reminders(job_run=done)
    row = _reminders_run_raising(runtime, monkeypatch, RuntimeError("the database went away"))
    assert row.finished_at is not None and row.result == {"error": "RuntimeError: the database went away"}
    last, result = job_runs.last_result(runtime.db, "reminders")  # the last run that ran to its end
    assert last.id == done and result == {"reminders_queued": 0}


def test_a_job_stopped_by_its_time_limit_records_it_too(runtime, monkeypatch):
    """Dramatiq's time limit interrupts an actor with a BaseException, which an `except Exception` let through:
    the run stayed 'running'."""
    from dramatiq.middleware.time_limit import TimeLimitExceeded

    row = _reminders_run_raising(runtime, monkeypatch, TimeLimitExceeded(), period="1")
    assert row.finished_at is not None and row.result["error"].startswith("TimeLimitExceeded")
