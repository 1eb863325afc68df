"""The scheduler process (or the thread inside `serve`): interval jobs that send messages."""
from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger

from coursepipe.runtime import Runtime
from workers.actors import send

log = logging.getLogger("coursepipe.scheduler")

# job name -> (actor, seconds between runs)
JOBS: dict[str, tuple[str, int]] = {
    "sweep": ("sweep_inbox", 10),
    "retry-waiting": ("retry_waiting", 60),
}


def _add_jobs(scheduler) -> None:
    for name, (actor_name, seconds) in JOBS.items():
        scheduler.add_job(
            send, IntervalTrigger(seconds=seconds, timezone="UTC"), args=[actor_name], id=name, name=name,
            coalesce=True, misfire_grace_time=seconds, max_instances=1, replace_existing=True,
        )


def start_background_scheduler(runtime: Runtime) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    _add_jobs(scheduler)
    scheduler.start()
    return scheduler


def run_blocking_scheduler(runtime: Runtime) -> None:
    scheduler = BlockingScheduler(timezone="UTC")
    _add_jobs(scheduler)
    log.info("scheduler started with jobs %s", sorted(JOBS))
    scheduler.start()
