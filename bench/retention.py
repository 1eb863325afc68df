"""Retention over a long history: one batch of the hourly `retention` job, and a run with nothing to prune, on a
database that has kept a lot.

    .venv/bin/python bench/retention.py [--rows 1000000] [--batches 3] [--database-url URL]

Seeds, in bulk: 3 × ROWS inbox events (ROWS past RETENTION_DAYS already pruned, ROWS past it still to prune,
ROWS recent), as many mails alike, two delivery moves for each mail not pruned yet, and 2 × ROWS enrollment
transitions (kept forever). `--database-url` reuses a database seeded before; every batch is rolled back, so
the database is left as it was. Prints each batch's time, the time of each of its statements, and the time of
a run that finds nothing to prune (RETENTION_DAYS past every row).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import fresh_database  # noqa: E402

RETENTION_DAYS = 400
AGE_DAYS = 450  # the old rows' age: past RETENTION_DAYS
IDLE_DAYS = 460  # a RETENTION_DAYS past every seeded row: nothing to prune


def seed(url: str, rows: int) -> float:
    started = time.perf_counter()
    engine = sa.create_engine(url)
    ages = ("CASE WHEN g <= 2 * CAST(:n AS int) THEN now() - interval '450 days' + g * interval '1 second'"
            " ELSE now() - interval '10 days' + (g - 2 * CAST(:n AS int)) * interval '100 ms' END")
    pruned = ("jsonb_build_object('pruned_at', '2026-01-01T00:00:00+00:00', 'sha256', md5(g::text))")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO inbox_event (source, event_id, type, subject, payload, status, attempts, received_at,"
            " processed_at) SELECT 'platform', 'ev_' || g, 'student.upserted', 'student:s' || g,"
            f" CASE WHEN g <= CAST(:n AS int) THEN {pruned} ELSE jsonb_build_object('id', 'ev_' || g, 'type',"
            " 'student.upserted', 'data', jsonb_build_object('note', repeat('x', 600))) END, 'processed', 1,"
            f" {ages}, now() FROM generate_series(1, 3 * CAST(:n AS int)) g"), {"n": rows})
        conn.execute(sa.text(
            "INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts,"
            " created_at, next_attempt_at, sent_at) SELECT md5('p' || g), 'mail:' || g, 'mail', 'enrollment_welcome',"
            " CASE WHEN g <= CAST(:n AS int) THEN NULL ELSE 's' || g || '@example.test' END,"
            f" CASE WHEN g <= CAST(:n AS int) THEN {pruned} ELSE jsonb_build_object('template', 'enrollment_welcome',"
            " 'context', jsonb_build_object('note', repeat('x', 600))) END, 'sent', 1,"
            f" {ages}, now(), now() FROM generate_series(1, 3 * CAST(:n AS int)) g"), {"n": rows})
        # the pruned mails' moves went with them; the others' remain, two each
        conn.execute(sa.text(
            "INSERT INTO transition_log (entity, entity_id, from_status, to_status, cause, at)"
            " SELECT 'outbox', o.id::text, m.f, m.t, 'relay', o.created_at FROM outbox_message o,"
            " (VALUES ('pending', 'sending'), ('sending', 'sent')) AS m(f, t) WHERE o.id > CAST(:n AS int)"),
            {"n": rows})
        conn.execute(sa.text(
            "INSERT INTO transition_log (entity, entity_id, from_status, to_status, cause, at)"
            " SELECT 'enrollment', g::text, NULL, 'active', 'checkout:cs_' || g,"
            " CASE WHEN g <= CAST(:n AS int) THEN now() - interval '450 days' + g * interval '1 second'"
            " ELSE now() - interval '10 days' END FROM generate_series(1, 2 * CAST(:n AS int)) g"), {"n": rows})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def batches(url: str, count: int) -> list[dict]:
    from db.database import Database
    from tasks.lifecycle import retention

    database = Database(url)
    spent: dict[str, float] = collections.defaultdict(float)
    starts: dict[int, float] = {}

    def before(conn, cursor, statement, parameters, context, executemany):
        starts[id(cursor)] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany):
        spent[" ".join(statement.split())[:48]] += time.perf_counter() - starts.pop(id(cursor))

    sa.event.listen(database.engine, "before_cursor_execute", before)
    sa.event.listen(database.engine, "after_cursor_execute", after)
    out = []
    try:
        for days in [RETENTION_DAYS] * count + [IDLE_DAYS]:
            spent.clear()
            session = database.sessions()
            try:
                started = time.perf_counter()
                done = retention.prune(session=session, retention_days=days)
                out.append({"retention_days": days, "seconds": time.perf_counter() - started, **done.as_dict(),
                            "statements": dict(spent)})
            finally:
                session.rollback()
                session.close()
    finally:
        database.dispose()
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--database-url", help="a database seeded before; every batch is rolled back")
    args = parser.parse_args(argv)
    url = args.database_url
    if url is None:
        url = fresh_database("coursepipe_bench_retention")
        print(f"seeded {3 * args.rows} events, {3 * args.rows} mails, {6 * args.rows} transitions "
              f"in {seed(url, args.rows):.0f} s")
    results = batches(url, args.batches)
    for r in results:
        what = "nothing to prune" if r["retention_days"] == IDLE_DAYS else "a batch"
        print(f"{what:16s} {r['seconds']:6.2f} s: {r['events_pruned']} events, {r['mails_pruned']} mails, "
              f"{r['transitions_pruned']} delivery moves")
        for statement, seconds in r["statements"].items():
            print(f"    {seconds:6.2f} s  {statement}")
    return results


if __name__ == "__main__":
    main()
