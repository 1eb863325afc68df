"""Scale: fulfilment rate and the reminder scan with many existing enrollments vs an empty database,
with the query plans that make it so.

    .venv/bin/python bench/scale.py [--enrollments 1000000] [--reminder-enrollments 100000] [--purchases 1500]

Fulfilment here is the worker's function for one message (`workers.inbox_runs.run_message`) in one
process, on stored purchases, by both paths a purchase can take (the fast path, and the general path a
replay takes), so the comparison isolates the database's growth from broker and process effects.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import fresh_database, seed_course  # noqa: E402
from bench.fulfil import store_purchases  # noqa: E402

STEPS = 5
PATHS = {"fast": "purchase fast path", "general": "general path (runner, ORM)"}


def fulfil_rate(url: str, purchases: int, *, fast: bool) -> float:
    """Purchases/s through the worker's own function for one message, without the broker: the purchase
    fast path (`fast`: what a message the ingress marked as a purchase runs) or the general path (the
    inbox runner and the ORM: what a replayed or re-enqueued purchase runs)."""
    from coursepipe.settings import Settings
    from db.database import Database
    from coursepipe.runtime import handler_table
    from workers.inbox_runs import run_message

    ids = store_purchases(url, purchases, uuid.uuid4().hex[:6])
    handlers = handler_table()
    database = Database(url)
    settings = Settings(database_url=url)

    def run(inbox_id: int) -> None:
        run_message(database=database, inbox_id=inbox_id, handlers=handlers, settings=settings, purchase=fast)

    for inbox_id in ids[:100]:  # warm-up: statement caches, prepared statements
        run(inbox_id)
    started = time.perf_counter()
    for inbox_id in ids[100:]:
        run(inbox_id)
    rate = (len(ids) - 100) / (time.perf_counter() - started)
    database.dispose()
    return rate


def settle(url: str) -> None:
    """VACUUM ANALYZE and a CHECKPOINT before a measurement, on the empty and on the loaded database alike."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
        conn.execute(sa.text("CHECKPOINT"))
    engine.dispose()


def seed_enrollments(url: str, count: int, *, batch: str = "a", booked_fraction: float = 0.9) -> float:
    """`count` active enrollments with a progress row per step and a bundle grant, in bulk SQL.
    Step 2 is booked for `booked_fraction` of them; its class starts within the reminder window."""
    started = time.perf_counter()
    engine = sa.create_engine(url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        program_id, = conn.execute(sa.text("SELECT id FROM course_program WHERE code = 'BENCH'")).one()
        conn.execute(sa.text(
            "INSERT INTO student (id, email, name, timezone, created_at, updated_at) "
            "SELECT 'scale_' || :b || '_' || g, 'scale_' || :b || '_' || g || '@bench.test', 'Scale ' || g, 'UTC', now(), now() "
            "FROM generate_series(1, :n) g"), {"n": count, "b": batch})
        conn.execute(sa.text(
            "INSERT INTO student_course_enrollment (student_id, program_id, status, stripe_checkout_session_id, "
            "stripe_payment_intent_id, amount_total, currency, amount_refunded, fulfilment_metadata, activated_at, "
            "created_at, updated_at) SELECT 'scale_' || :b || '_' || g, :p, 'active', 'cs_scale_' || :b || '_' || g, 'pi_scale_' || :b || '_' || g, 12000, "
            "'usd', 0, '{}', now(), now(), now() FROM generate_series(1, :n) g"), {"n": count, "p": program_id, "b": batch})
        conn.execute(sa.text(
            "INSERT INTO student_course_progress (enrollment_id, step_id, status, skipped_ahead, created_at, updated_at)"
            " SELECT e.id, s.id, CASE WHEN s.position = 2 AND random() < :booked THEN 'booked' ELSE 'unbooked' END,"
            " false, now(), now() FROM student_course_enrollment e CROSS JOIN course_step s"
            " WHERE s.program_id = :p AND e.stripe_checkout_session_id LIKE 'cs_scale_' || :b || '_%'"),
            {"p": program_id, "booked": booked_fraction, "b": batch})
        conn.execute(sa.text(
            "INSERT INTO credit_ledger_entry (idempotency_key, student_id, credit_type, entry_type, quantity, cause, "
            "enrollment_id, created_at) SELECT 'grant:scale:' || e.id, e.student_id, 'private', 'grant', 2, "
            "'enrollment:' || e.id, e.id, now() FROM student_course_enrollment e "
            "WHERE e.stripe_checkout_session_id LIKE 'cs_scale_' || :b || '_%'"), {"b": batch})
        # class mirror: step 2's option starts in 3 days (inside the window), the others in 30 days
        for position in range(1, STEPS + 1):
            days = 3 if position == 2 else 30
            conn.execute(sa.text(
                "INSERT INTO group_class (id, title, starts_at, ends_at, capacity, seats_taken, status, created_at, "
                "updated_at) VALUES (:id, :t, :s, :e, 20, 5, 'scheduled', now(), now()) ON CONFLICT DO NOTHING"),
                {"id": f"gc_BENCH_{position}", "t": f"Bench {position}", "s": now + timedelta(days=days),
                 "e": now + timedelta(days=days, hours=1)})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def reminder_scan(url: str) -> tuple[float, int]:
    from coursepipe.settings import Settings
    from db.database import Database
    from tasks.enrollments import reminders

    database = Database(url)
    settings = Settings(database_url=url, reminders_enabled=True, reminder_window_days=7)
    started = time.perf_counter()
    queued = reminders.send_reminders(unit_of_work=database.session_scope, settings=settings)
    elapsed = time.perf_counter() - started
    database.dispose()
    return elapsed, queued


PLANS = {
    "fulfil: enrollment by checkout session":
        "SELECT id FROM student_course_enrollment WHERE stripe_checkout_session_id = 'cs_scale_a_77'",
    "fulfil: inbox row claim": "SELECT * FROM inbox_event WHERE id = 5 FOR UPDATE SKIP LOCKED",
    "booking: progress of one enrollment":
        "SELECT * FROM student_course_progress WHERE enrollment_id = 77",
    "credits: lots of a student": "SELECT * FROM credit_ledger_entry WHERE student_id = 'scale_a_77'",
    "reminders: unbooked rows of the steps with a class coming up":
        "SELECT p.enrollment_id FROM student_course_progress p JOIN student_course_enrollment e "
        "ON e.id = p.enrollment_id WHERE p.step_id IN (SELECT step_id FROM course_step_option o JOIN group_class c "
        "ON c.id = o.group_class_id WHERE c.starts_at BETWEEN now() AND now() + interval '7 days') "
        "AND p.status = 'unbooked' AND e.status = 'active'",
}


def plans(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    out = {}
    with engine.connect() as conn:
        for name, sql in PLANS.items():
            rows = conn.execute(sa.text("EXPLAIN " + sql)).scalars().all()
            out[name] = " | ".join(r.strip() for r in rows if "Scan" in r or r is rows[0])
    engine.dispose()
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--enrollments", type=int, default=1_000_000)
    parser.add_argument("--reminder-enrollments", type=int, default=100_000)
    parser.add_argument("--purchases", type=int, default=3000)
    args = parser.parse_args(argv)

    url = fresh_database("coursepipe_bench_scale")
    seed_course(url, steps=STEPS)
    settle(url)
    empty = {path: fulfil_rate(url, args.purchases, fast=path == "fast") for path in PATHS}
    seeded = seed_enrollments(url, args.reminder_enrollments)
    scan_s, queued = reminder_scan(url)
    if args.enrollments > args.reminder_enrollments:
        seeded += seed_enrollments(url, args.enrollments - args.reminder_enrollments, batch="b",
                                   booked_fraction=1.0)
    settle(url)  # steady state: not the minutes right after a bulk load, while autovacuum works through it
    loaded = {path: fulfil_rate(url, args.purchases, fast=path == "fast") for path in PATHS}
    print(f"seeded {args.enrollments} enrollments ({args.enrollments * STEPS} progress rows) in {seeded:.0f} s")
    for path, words in PATHS.items():
        print(f"fulfilment, {words} (1 process, no broker): empty {empty[path]:.0f}/s, with {args.enrollments} "
              f"enrollments {loaded[path]:.0f}/s -> {empty[path] / loaded[path]:.2f}x slower")
    print(f"reminder scan over {args.reminder_enrollments} enrollments: {scan_s:.2f} s, {queued} reminders queued")
    for name, plan in plans(url).items():
        print(f"  plan [{name}]: {plan}")
    return {"empty_rate": empty, "loaded_rate": loaded, "scan_s": scan_s, "queued": queued, "url": url}


if __name__ == "__main__":
    main()
