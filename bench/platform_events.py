"""Platform events: what each type costs the worker, by the path every platform event takes (the inbox
runner and its handler; only a purchase has a fast path).

    .venv/bin/python bench/platform_events.py [--students 1000] [--rounds 3]

A course of five steps is bought by `--students` students (the purchase fast path, not measured); then,
per round, each type runs over its own stored events through the worker's own function for a message
(`workers.inbox_runs.run_message`), in one process without the broker, in the order the platform sends
them: the classes, the students, a booking of step 1 for each student, then attendance for half of those
bookings and a within-policy cancellation for the other half. Each line gives events/s, this process's
CPU and the PostgreSQL backend's CPU per event, and the statements per event; the figures of a type are
the medians of its rounds (each round a fresh database).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import fresh_database, pids_cpu_seconds, postgres_backends, seed_course  # noqa: E402
from bench.fulfil import fulfil_purchases  # noqa: E402

STEPS = 5
TYPES = ("class.upserted", "student.upserted", "booking.created", "attendance.marked", "booking.cancelled")


def _events(run: str, students: int, steps: list[int], now: datetime) -> dict[str, list[dict]]:
    """Each type's event data, for `students` students who each bought the course."""
    starts = now + timedelta(days=3)
    half = students // 2
    return {
        "class.upserted": [{"class_id": f"gc_BENCH_{p}", "title": f"Bench {p}", "capacity": students + 10,
                            "seats_taken": 0, "starts_at": (starts + timedelta(days=p)).isoformat()}
                           for p in range(1, STEPS + 1)],
        "student.upserted": [{"student_id": f"stu_{run}_{k}", "email": f"stu_{run}_{k}@bench.test",
                              "name": f"Student {k}", "timezone": "Europe/Berlin"} for k in range(students)],
        "booking.created": [{"booking_id": f"bk_{run}_{k}", "student_id": f"stu_{run}_{k}", "class_id": "gc_BENCH_1",
                             "course_step_id": steps[0]} for k in range(students)],
        "attendance.marked": [{"booking_id": f"bk_{run}_{k}", "outcome": "attended", "marked_at": now.isoformat()}
                              for k in range(half)],
        "booking.cancelled": [{"booking_id": f"bk_{run}_{k}", "cancelled_at": now.isoformat(), "within_policy": True}
                              for k in range(half, students)],
    }


def _store(database, run: str, type_: str, datas: list[dict], now: datetime) -> list[int]:
    from db.enums import InboxSource
    from tasks.events import platform_subject
    from tasks.inbox.store import store_event

    ids = []
    with database.session_scope() as s:
        for n, data in enumerate(datas):
            event = {"id": f"evt_{run}_{type_}_{n}", "type": type_, "occurred_at": now.isoformat(), "data": data}
            ids.append(store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"], type=type_,
                                   payload=event, subject=platform_subject(type_, data), occurred_at=now).id)
    return ids


def one_round(students: int) -> dict[str, dict]:
    from sqlalchemy import event

    from coursepipe.runtime import handler_table
    from coursepipe.settings import Settings
    from db.database import Database
    from workers.inbox_runs import run_message

    url = fresh_database("coursepipe_bench_platform")
    seed_course(url, steps=STEPS)
    run = uuid.uuid4().hex[:6]
    fulfil_purchases(url, students, run)
    database, settings, handlers = Database(url), Settings(database_url=url), handler_table()
    with database.engine.connect() as conn:
        steps = list(conn.execute(sa.text("SELECT s.id FROM course_step s JOIN course_program p ON p.id = s.program_id"
                                          " WHERE p.code = 'BENCH' ORDER BY s.position")).scalars())
    statements = [0]
    event.listen(database.engine, "before_cursor_execute", lambda *args: statements.__setitem__(0, statements[0] + 1))
    now = datetime.now(timezone.utc)
    figures = {}
    for type_, datas in _events(run, students, steps, now).items():
        ids = _store(database, run, type_, datas, now)
        backends = postgres_backends(url)  # this process's connections (the pool's, the fast path's)
        outcomes: dict[str, int] = {}
        statements[0] = 0
        cpu, pg, wall = time.process_time(), pids_cpu_seconds(backends), time.perf_counter()
        for inbox_id in ids:
            outcome = run_message(database=database, inbox_id=inbox_id, handlers=handlers, settings=settings).outcome
            outcomes[outcome.value] = outcomes.get(outcome.value, 0) + 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        pg = pids_cpu_seconds(backends) - pg
        if outcomes != {"processed": len(ids)}:
            raise SystemExit(f"{type_}: expected every event processed, got {outcomes}")
        figures[type_] = {"rate": len(ids) / wall, "cpu_us": cpu / len(ids) * 1e6, "pg_us": pg / len(ids) * 1e6,
                          "statements": statements[0] / len(ids), "events": len(ids)}
    database.dispose()
    return figures


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    rounds = [one_round(args.students) for _ in range(args.rounds)]
    result = {}
    print(f"{'event type':<20}{'events':>8}{'events/s':>10}{'worker CPU µs':>15}{'PostgreSQL µs':>15}{'statements':>12}")
    for type_ in TYPES:
        med = {key: statistics.median(r[type_][key] for r in rounds)
               for key in ("rate", "cpu_us", "pg_us", "statements")}
        result[type_] = med
        print(f"{type_:<20}{rounds[0][type_]['events']:>8}{med['rate']:>10.0f}{med['cpu_us']:>15.0f}"
              f"{med['pg_us']:>15.0f}{med['statements']:>12.1f}")
    return result


if __name__ == "__main__":
    main()
