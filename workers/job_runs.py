"""`job_run` rows: which scheduled period fired (one per (job, period), whichever scheduler claims it),
and what the job's actor reported when it finished."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update

from db.database import upsert_insert
from db.models import JobRun
from db.types import utcnow

log = logging.getLogger("coursepipe.scheduler")

JOB_RUN_RETENTION = timedelta(days=3)


def claim_period(db, *, job: str, period: str, runner: str) -> int | None:
    """Insert the (job, period) row and return its id; None if some process already fired this period."""
    with db.session_scope() as session:
        insert = upsert_insert(session)
        table = JobRun.__table__
        new_id = session.execute(
            insert(table)
            .values(job=job, period_key=period, runner=runner, started_at=utcnow(), result={})
            .on_conflict_do_nothing(index_elements=["job", "period_key"])
            .returning(table.c.id)
        ).scalar()
    return int(new_id) if new_id is not None else None


def finish_job_run(db, run_id: int | None, result: dict[str, Any]) -> None:
    """The job's actor is done: `finished_at` and what it did (a run without it never finished)."""
    if run_id is None:  # sent by something other than the scheduler (a relay chaining itself)
        return
    with db.session_scope() as session:
        done = session.execute(update(JobRun).where(JobRun.id == run_id).values(finished_at=utcnow(), result=result))
    if done.rowcount == 0:  # pruned meanwhile, or a message not made by this scheduler: the job ran all the same
        log.warning("job run %s finished, but no job_run row has that id: nothing recorded", run_id)


def prune_job_runs(db, *, older_than: timedelta = JOB_RUN_RETENTION) -> int:
    with db.session_scope() as session:
        result = session.execute(delete(JobRun).where(JobRun.started_at < utcnow() - older_than))
        return result.rowcount or 0


def last_runs(db) -> dict[str, JobRun]:
    """The newest job_run per job (for `coursepipe jobs list`)."""
    with db.session_scope() as session:
        rows = session.scalars(select(JobRun).order_by(JobRun.started_at.desc(), JobRun.id.desc()).limit(2000))
        newest: dict[str, JobRun] = {}
        for row in rows:
            newest.setdefault(row.job, row)
        return newest




def run_error(db, run_id: int | None) -> str | None:
    """The `error` one run was finished with (None: it ran to its end, or is not finished)."""
    with db.session_scope() as session:
        row = session.get(JobRun, run_id) if run_id is not None else None
        return (row.result or {}).get("error") if row is not None and row.finished_at is not None else None


def last_result(db, job: str) -> tuple[JobRun | None, dict[str, Any]]:
    """The newest run of `job` that ran to its end and what it reported (e.g. where `reconcile` stopped); a run
    finished with an `error` (never queued: `coursepipe jobs run` with the broker refusing) did not run."""
    with db.session_scope() as session:
        row = session.scalar(select(JobRun).where(JobRun.job == job, JobRun.finished_at.is_not(None),
                                                  JobRun.result["error"].as_string().is_(None))
                             .order_by(JobRun.finished_at.desc(), JobRun.id.desc()).limit(1))
        if row is None:
            return None, {}
        session.expunge(row)
        return row, dict(row.result or {})
