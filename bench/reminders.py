"""The hourly `reminders` job over a large course: its first run, which queues a reminder for every unbooked
step inside the window, and the run after it, which finds nothing new.

    .venv/bin/python bench/reminders.py [--enrollments 2000000] [--booked 0.5]

Seeds a fresh database as `bench/scale.py` does: ENROLLMENTS active enrollments of a 5-step course, step 2's
class 3 days ahead and booked by a BOOKED share of them, so about ENROLLMENTS × (1 − BOOKED) reminders are
due. Both runs go through `send_reminders` with the job's own units of work, and commit. Prints each run's
time, how many transactions it took and what it queued, and the process's peak memory.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import fresh_database, seed_course  # noqa: E402
from bench.scale import STEPS, seed_enrollments, settle  # noqa: E402


def timed_run(database, settings) -> dict:
    from tasks.enrollments import reminders

    units = 0

    def counted_unit():
        nonlocal units
        units += 1
        return database.session_scope()

    started = time.perf_counter()
    queued = reminders.send_reminders(unit_of_work=counted_unit, settings=settings)
    return {"seconds": time.perf_counter() - started, "queued": queued, "transactions": units}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--enrollments", type=int, default=2_000_000)
    parser.add_argument("--booked", type=float, default=0.5)
    args = parser.parse_args(argv)

    from coursepipe.settings import Settings
    from db.database import Database

    url = fresh_database("coursepipe_bench_reminders")
    seed_course(url, steps=STEPS)
    seeded = seed_enrollments(url, args.enrollments, booked_fraction=args.booked)
    settle(url)
    database = Database(url)
    settings = Settings(database_url=url, reminders_enabled=True, reminder_window_days=7)
    first = timed_run(database, settings)
    again = timed_run(database, settings)
    database.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"seeded {args.enrollments} enrollments in {seeded:.0f} s")
    for name, run in (("first run", first), ("next run", again)):
        print(f"reminders, {name}: {run['queued']} queued in {run['seconds']:.1f} s, {run['transactions']} transactions")
    print(f"peak memory of this process: {peak_mb:.0f} MB")
    return {"first": first, "again": again, "peak_mb": peak_mb}


if __name__ == "__main__":
    main()
