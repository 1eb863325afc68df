"""Fulfilment benchmark: course purchases fulfilled per second through the Redis broker into
PostgreSQL (Dramatiq worker processes), next to the same SQL transaction shape executed directly
with psycopg by the same number of processes and threads, measured in the same run.

    .venv/bin/python bench/fulfil.py [--count 6000] [--processes 2] [--threads 4] [--repeat 3]

Two references: the purchase written plainly as 14 statements (claim, lock, look-ups, inserts,
status), and the very statements the pipeline's fast path sends (`tasks.purchases.fast_purchase`) with
pre-built payloads — the second shows what the broker, the actor and the Python around the SQL cost.
The three alternate for `--repeat` rounds (each on a fresh database) and the medians are compared: the
machine's speed drifts by ±15 % within minutes, which had made one pipeline run against one
reference run read anywhere from 0.70 to 0.93.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from db.types import utcnow  # noqa: E402

from bench.common import (  # noqa: E402
    drop_namespace,
    dramatiq_workers,
    env_for,
    fresh_database,
    tree_cpu_seconds,
    inbox_counts,
    purchase_event,
    seed_course,
)

STEPS = 5


def store_purchases(url: str, count: int, run: str) -> list[int]:
    from db.database import Database
    from db.enums import InboxSource
    from tasks.events import stripe_subject
    from tasks.inbox.store import store_event

    database = Database(url)
    ids = []
    with database.session_scope() as s:
        for n in range(count):
            event = purchase_event(n, run=run)
            ids.append(store_event(session=s, source=InboxSource.STRIPE, event_id=event["id"], type=event["type"],
                                   payload=event, subject=stripe_subject(event["type"], event["data"]["object"]),
                                   occurred_at=None).id)
    database.dispose()
    return ids


def enqueue(env: dict, ids: list[int]) -> None:
    from coursepipe.runtime import init_runtime
    from coursepipe.settings import Settings

    runtime = init_runtime(Settings.from_env(env))
    actor = runtime.actors["process_inbox_event"]
    for inbox_id in ids:
        actor.send(inbox_id, purchase=True)  # marked, as the ingress marks a paid course checkout


def processed_window(url: str) -> tuple[int, float]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n, first, last = conn.execute(sa.text(
            "SELECT count(*), min(processed_at), max(processed_at) FROM inbox_event WHERE status = 'processed'"
        )).one()
    engine.dispose()
    return n, (last - first).total_seconds() if n > 1 else 0.0


def measure_pipeline(url: str, env: dict, count: int, processes: int, threads: int) -> dict:
    run = uuid.uuid4().hex[:6]
    ids = store_purchases(url, count, run)
    enqueue(env, ids)
    started = time.monotonic()
    with dramatiq_workers(env, processes, threads) as workers:
        # worker CPU per purchase, start-up excluded: from the first processed row to the last
        while not inbox_counts(url).get("processed") and time.monotonic() - started < 60:
            time.sleep(0.05)
        cpu_start, done_start = tree_cpu_seconds(workers.pid), inbox_counts(url).get("processed", 0)
        while inbox_counts(url).get("pending", 0) > 0 and time.monotonic() - started < 600:
            time.sleep(0.2)
        cpu = tree_cpu_seconds(workers.pid) - cpu_start
    counts = inbox_counts(url)
    worker_ms = cpu * 1000 / max(1, counts.get("processed", 0) - done_start)
    n, window = processed_window(url)
    with sa.create_engine(url).connect() as conn:
        enrollments = conn.execute(sa.text("SELECT count(*) FROM student_course_enrollment")).scalar()
        progress = conn.execute(sa.text("SELECT count(*) FROM student_course_progress")).scalar()
        grants = conn.execute(sa.text("SELECT count(*) FROM credit_ledger_entry")).scalar()
    return {"rate": n / window if window else 0.0, "processed": n, "counts": counts, "worker_cpu_ms": worker_ms,
            "enrollments": enrollments,
            "progress_rows": progress, "ledger_rows": grants}


# --------------------------------------------------------------------------- the reference

REFERENCE_SQL = [
    # claim the inbox row, serialize on the subject
    ("SELECT id, status, payload FROM inbox_event WHERE id = %(inbox_id)s FOR UPDATE SKIP LOCKED", False),
    ("SELECT pg_advisory_xact_lock(hashtext(%(subject)s))", False),
    # look up the course, its steps and bundle, the student
    ("SELECT id FROM course_program WHERE code = 'BENCH' AND deleted_at IS NULL", False),
    ("SELECT id FROM course_step WHERE program_id = %(program_id)s AND deleted_at IS NULL ORDER BY position", False),
    ("SELECT kind, quantity FROM course_bundle_component WHERE program_id = %(program_id)s", False),
    ("SELECT id FROM student WHERE id = %(student)s", False),
    ("INSERT INTO student (id, email, created_at, updated_at) VALUES (%(student)s, %(email)s, now(), now())", False),
    ("SELECT id FROM student_course_enrollment WHERE stripe_checkout_session_id = %(cs)s", False),
    ("INSERT INTO student_course_enrollment (student_id, program_id, status, stripe_checkout_session_id, "
     "stripe_payment_intent_id, amount_total, currency, amount_refunded, fulfilment_metadata, activated_at, "
     "created_at, updated_at) VALUES (%(student)s, %(program_id)s, 'active', %(cs)s, %(pi)s, 12000, 'usd', 0, "
     "'{}', now(), now(), now()) RETURNING id", True),
    ("INSERT INTO student_course_progress (enrollment_id, step_id, status, skipped_ahead, created_at, updated_at) "
     "VALUES (%(enrollment_id)s, %(step_id)s, 'unbooked', false, now(), now())", "per_step"),
    ("INSERT INTO credit_ledger_entry (idempotency_key, student_id, credit_type, entry_type, quantity, cause, "
     "enrollment_id, created_at) VALUES (%(grant_key)s, %(student)s, 'private', 'grant', 2, %(cause)s, "
     "%(enrollment_id)s, now())", False),
    ("INSERT INTO outbox_message (dedupe_key, channel, topic, payload, status, attempts, enrollment_id, created_at, "
     "next_attempt_at) VALUES (%(out1)s, 'platform', 'enrollment.created', '{}', 'pending', 0, %(enrollment_id)s, "
     "now(), now())", False),
    ("INSERT INTO outbox_message (dedupe_key, channel, topic, recipient, payload, status, attempts, enrollment_id, "
     "created_at, next_attempt_at) VALUES (%(out2)s, 'mail', 'enrollment_welcome', %(email)s, '{}', 'pending', 0, "
     "%(enrollment_id)s, now(), now())", False),
    ("UPDATE inbox_event SET status = 'processed', attempts = attempts + 1, processed_at = now() "
     "WHERE id = %(inbox_id)s", False),
]


def _drain(dsn: str, work: list[int], threads: int, results, purchase) -> None:
    """`threads` connections take inbox ids from `work` and run `purchase(conn, inbox_id)` in a transaction each."""
    import psycopg

    lock = threading.Lock()
    queue = list(work)

    def one_thread():
        with psycopg.connect(dsn) as conn:
            while True:
                with lock:
                    if not queue:
                        return
                    inbox_id = queue.pop()
                with conn.transaction():
                    purchase(conn, inbox_id)

    pool = [threading.Thread(target=one_thread) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put(len(work))


def _reference_worker(dsn: str, work: list[int], threads: int, run: str, results) -> None:
    """The purchase written plainly: 14 statements (REFERENCE_SQL)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        program_id = conn.execute("SELECT id FROM course_program WHERE code = 'BENCH'").fetchone()[0]

    def purchase(conn, inbox_id: int) -> None:
        p = {"inbox_id": inbox_id, "subject": f"payment:ref_{run}_{inbox_id}", "program_id": program_id,
             "student": f"ref_{run}_{inbox_id}", "email": f"ref{inbox_id}@bench.test",
             "cs": f"cs_ref_{run}_{inbox_id}", "pi": f"pi_ref_{run}_{inbox_id}",
             "grant_key": f"grant:ref:{run}:{inbox_id}", "cause": f"enrollment:ref{inbox_id}",
             "out1": f"ref1:{run}:{inbox_id}", "out2": f"ref2:{run}:{inbox_id}"}
        steps = []
        for sql, kind in REFERENCE_SQL:
            if kind == "per_step":
                for step_id in steps:
                    conn.execute(sql, {**p, "step_id": step_id})
                continue
            cur = conn.execute(sql, p)
            if "FROM course_step" in sql:
                steps = [r[0] for r in cur.fetchall()]
            elif kind is True:
                p["enrollment_id"] = cur.fetchone()[0]

    _drain(dsn, work, threads, results, purchase)


def _reference_fast_worker(dsn: str, work: list[int], threads: int, run: str, results) -> None:
    """The pipeline's own three statements (tasks.purchases.fast_purchase), by psycopg directly, payloads pre-built."""
    import json

    from tasks.purchases import fast_purchase as fp
    from tasks.inbox.context import lock_key

    payload = {"type": "enrollment.created", "data": {"steps": [], "bundle": {"private": 2}}}

    def purchase(conn, inbox_id: int) -> None:
        row = conn.execute(fp._CLAIM, (inbox_id,)).fetchone()
        student = f"reff_{run}_{inbox_id}"
        found = conn.execute(fp._PREPARE, {"locks": [lock_key(row[3])], "student": student,
                                           "email": f"{student}@bench.test",
                                           "name": None, "now": utcnow(), "code": "BENCH"}).fetchone()
        eid = found[6]
        conn.execute(fp._FULFIL, {
            "id": eid, "student": student, "program": found[0], "cs": f"cs_reff_{run}_{inbox_id}",
            "pi": f"pi_reff_{run}_{inbox_id}", "product": found[9], "price": found[10], "amount": 12000,
            "currency": "usd", "metadata": json.dumps(payload), "now": utcnow(), "cause": f"checkout:{inbox_id}",
            "steps": [s[0] for s in found[4]], "bundle_cause": f"enrollment:{eid}",
            "grants": json.dumps([{"k": f"grant:enrollment:{eid}:private", "t": "private", "q": 2}]),
            "messages": json.dumps([
                {"d": f"reff1:{eid}", "c": "platform", "t": "enrollment.created", "r": None, "p": payload},
                {"d": f"reff2:{eid}", "c": "mail", "t": "enrollment_welcome",
                 "r": f"{student}@bench.test", "p": payload}]),
            "inbox_id": inbox_id, "keys": [row[3]]}).fetchone()

    _drain(dsn, work, threads, results, purchase)


def measure_reference(url: str, count: int, processes: int, threads: int, worker=None) -> dict:
    """The same transaction shape as a purchase, by psycopg directly, on rows of its own."""
    run = uuid.uuid4().hex[:6]
    ids = store_purchases(url, count, "ref" + run)  # inbox rows to claim, like the pipeline's
    dsn = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    results = multiprocessing.Queue()
    chunks = [ids[i::processes] for i in range(processes)]
    started = time.perf_counter()
    procs = [multiprocessing.Process(target=worker or _reference_worker, args=(dsn, chunk, threads, run, results))
             for chunk in chunks]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    return {"rate": count / elapsed, "elapsed_s": elapsed}


def _median(runs: list[dict]) -> dict:
    return dict(sorted(runs, key=lambda r: r["rate"])[len(runs) // 2], rates=[r["rate"] for r in runs])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds of the three; medians shown")
    args = parser.parse_args(argv)

    runs = {"pipeline": [], "reference": [], "own_sql": []}
    for _ in range(args.repeat):  # each round on a fresh database: the same table sizes every round
        url = fresh_database("coursepipe_bench_fulfil")
        seed_course(url, steps=STEPS)
        env = env_for(url, f"bench-{uuid.uuid4().hex[:8]}")
        runs["pipeline"].append(measure_pipeline(url, env, args.count, args.processes, args.threads))
        runs["reference"].append(measure_reference(url, args.count, args.processes, args.threads))
        runs["own_sql"].append(measure_reference(url, args.count, args.processes, args.threads,
                                                 worker=_reference_fast_worker))
        drop_namespace(env["REDIS_NAMESPACE"])
    pipeline, reference, own_sql = (_median(runs[name]) for name in ("pipeline", "reference", "own_sql"))
    worker_ms = sorted(r["worker_cpu_ms"] for r in runs["pipeline"])[args.repeat // 2]
    ratio = pipeline["rate"] / reference["rate"] if reference["rate"] else 0.0
    own_ratio = pipeline["rate"] / own_sql["rate"] if own_sql["rate"] else 0.0
    print(f"{'path':<52}{'purchases/s (median)':>22}   runs")
    for label, r in (("pipeline (Redis -> Dramatiq -> PostgreSQL)", pipeline),
                     ("reference: the purchase as 14 statements, psycopg", reference),
                     ("reference: the pipeline own 3 statements, psycopg", own_sql)):
        print(f"{label:<52}{r['rate']:>22.0f}   " + ", ".join(f"{rate:.0f}" for rate in r["rates"]))
    print(f"worker CPU per purchase (all worker processes, start-up excluded, median): {worker_ms:.2f} ms")
    last = runs["pipeline"][-1]
    print(f"ratio vs 14-statement reference: {ratio:.2f}   vs own statements: {own_ratio:.2f}   last round: processed "
          f"{last['processed']}/{args.count}, inbox {last['counts']}, enrollments {last['enrollments']}, progress rows "
          f"{last['progress_rows']}, ledger rows {last['ledger_rows']}   ({args.processes} processes x {args.threads} "
          f"threads, {args.repeat} rounds)")
    return {"pipeline": pipeline, "reference": reference, "own_sql": own_sql, "ratio": ratio, "own_ratio": own_ratio,
            "worker_cpu_ms": worker_ms}


if __name__ == "__main__":
    main()
