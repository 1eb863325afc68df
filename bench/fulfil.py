"""Fulfilment benchmark: course purchases fulfilled per second through the Redis broker into
PostgreSQL (Dramatiq worker processes), next to the same SQL transaction shape executed directly
with psycopg by the same number of processes and threads, measured in the same run.

    .venv/bin/python bench/fulfil.py [--count 6000] [--processes 2] [--threads 8] [--clients 4] [--repeat 3]

Two references: the purchase's rows written plainly as statements (issue 21: the claim, the locks, the buyer,
the course, the enrollment, its transition, the progress rows, the grant, both outbox rows, the inbox row,
with the pipeline's own JSON documents from the same round; bytes per purchase are printed), and the very statements the pipeline's fast path sends (`tasks.purchases.fast_purchase`) with
pre-built payloads — the second shows what the broker, the actor and the Python around the SQL cost.
The three alternate for `--repeat` rounds (each on a fresh database) and the medians are compared: the
machine's speed drifts by ±15 % within minutes, which had made one pipeline run against one
reference run read anywhere from 0.70 to 0.93.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from db.types import utcnow  # noqa: E402

from bench.common import (  # noqa: E402
    BackendCpu,
    drop_namespace,
    dramatiq_workers,
    env_for,
    fresh_database,
    tree_cpu_seconds,
    inbox_counts,
    purchase_event,
    seed_course,
    with_application_name,
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


def fulfil_purchases(url: str, count: int, run: str) -> None:
    """`count` purchases stored and fulfilled in this process by the worker's own function for a message
    (the fast path, as the ingress marks them): a database holding what the pipeline writes."""
    from coursepipe.runtime import handler_table
    from coursepipe.settings import Settings
    from db.database import Database
    from workers.inbox_runs import run_message

    database, settings, handlers = Database(url), Settings(database_url=url), handler_table()
    for inbox_id in store_purchases(url, count, run):
        run_message(database=database, inbox_id=inbox_id, handlers=handlers, settings=settings, purchase=True)
    database.dispose()


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
    name = f"bench-pipeline-{run}"
    env = {**env, "DATABASE_URL": with_application_name(url, name)}
    with BackendCpu(url, name) as backends, dramatiq_workers(env, processes, threads) as workers:
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
            "pg_cpu_us": backends.seconds * 1e6 / max(1, n),
            "enrollments": enrollments,
            "progress_rows": progress, "ledger_rows": grants}


# --------------------------------------------------------------------------- the reference

# The same rows a purchase writes, as plain statements (issue 21's reference): the claim, the advisory
# locks, the buyer, the course read, the enrollment, its transition, the progress rows, the grant, both
# outbox rows and the inbox row. The JSON documents (fulfilment metadata, the two outbox payloads) are the
# pipeline's own from the same round (`row_templates`), so both write the same bytes.
REFERENCE_SQL = [
    ("SELECT id, status, payload FROM inbox_event WHERE id = %(inbox_id)s FOR UPDATE SKIP LOCKED", False),
    ("SELECT pg_advisory_xact_lock(hashtext(%(subject)s)), pg_advisory_xact_lock(hashtext(%(payment)s))", False),
    ("INSERT INTO student (id, email, created_at, updated_at) VALUES (%(student)s, %(email)s, now(), now())"
     " ON CONFLICT (id) DO NOTHING", False),
    ("SELECT id, code, title, status, stripe_product_id, stripe_price_id FROM course_program WHERE code = 'BENCH'"
     " AND deleted_at IS NULL", False),
    ("SELECT id, label, title, position FROM course_step WHERE program_id = %(program_id)s AND deleted_at IS NULL"
     " ORDER BY position", False),
    ("SELECT id, kind, quantity FROM course_bundle_component WHERE program_id = %(program_id)s"
     " AND deleted_at IS NULL", False),
    ("INSERT INTO student_course_enrollment (student_id, program_id, status, stripe_checkout_session_id, "
     "stripe_payment_intent_id, stripe_product_id, stripe_price_id, amount_total, amount_subtotal, amount_tax, "
     "amount_discount, currency, amount_refunded, fulfilment_metadata, activated_at, created_at, updated_at, "
     "last_event_sequence) VALUES (%(student)s, %(program_id)s, 'active', %(cs)s, %(pi)s, 'prod_BENCH', "
     "'price_BENCH', 12000, 12000, 0, 0, 'usd', 0, %(metadata)s::jsonb, now(), now(), now(), 1) "
     "ON CONFLICT (stripe_checkout_session_id) DO NOTHING RETURNING id", True),
    ("INSERT INTO transition_log (entity, entity_id, from_status, to_status, cause, enrollment_id, at) "
     "VALUES ('enrollment', %(enrollment_id)s::text, NULL, 'active', %(cause)s, %(enrollment_id)s, now())", False),
    ("INSERT INTO student_course_progress (enrollment_id, step_id, status, skipped_ahead, created_at, updated_at) "
     "VALUES (%(enrollment_id)s, %(step_id)s, 'unbooked', false, now(), now())", "per_step"),
    ("INSERT INTO credit_ledger_entry (idempotency_key, student_id, credit_type, entry_type, quantity, cause, "
     "enrollment_id, created_at) VALUES (%(grant_key)s, %(student)s, 'private', 'grant', 2, %(bundle_cause)s, "
     "%(enrollment_id)s, now())", False),
    ("INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts, "
     "enrollment_id, sequence, created_at, next_attempt_at) VALUES (%(public1)s, %(out1)s, 'platform', "
     "'enrollment.created', NULL, %(payload1)s::jsonb, 'pending', 0, %(enrollment_id)s, 1, now(), now())", False),
    ("INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts, "
     "enrollment_id, sequence, created_at, next_attempt_at) VALUES (%(public2)s, %(out2)s, 'mail', "
     "'enrollment_welcome', %(email)s, %(payload2)s::jsonb, 'pending', 0, %(enrollment_id)s, NULL, now(), now())",
     False),
    ("UPDATE inbox_event SET status = 'processed', attempts = attempts + 1, processed_at = now(), last_error = NULL, "
     "waiting_for = NULL WHERE id = %(inbox_id)s", False),
]


# the bytes of one purchase's rows (enrollment, transitions, progress, grants, outbox), pipeline or reference
ROW_BYTES = sa.text(
    "SELECT (SELECT sum(pg_column_size(x.*)) FROM student_course_enrollment x WHERE id = :e)"
    " + (SELECT coalesce(sum(pg_column_size(x.*)), 0) FROM transition_log x WHERE enrollment_id = :e)"
    " + (SELECT sum(pg_column_size(x.*)) FROM student_course_progress x WHERE enrollment_id = :e)"
    " + (SELECT sum(pg_column_size(x.*)) FROM credit_ledger_entry x WHERE enrollment_id = :e)"
    " + (SELECT sum(pg_column_size(x.*)) FROM outbox_message x WHERE enrollment_id = :e)")


def row_templates(url: str) -> dict:
    """The JSON documents one of the pipeline's purchases wrote in this round (enrollment metadata, the
    platform event, the welcome mail), and the bytes of a purchase's rows, for the reference to write alike."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        eid, metadata = conn.execute(sa.text(
            "SELECT id, fulfilment_metadata::text FROM student_course_enrollment ORDER BY id LIMIT 1")).one()
        payloads = dict(conn.execute(sa.text(
            "SELECT channel, payload::text FROM outbox_message WHERE enrollment_id = :e"), {"e": eid}).all())
        row_bytes = conn.execute(ROW_BYTES, {"e": eid}).scalar()
    engine.dispose()
    return {"metadata": metadata, "payload1": payloads["platform"], "payload2": payloads["mail"],
            "row_bytes": int(row_bytes)}


def reference_row_bytes(url: str) -> int:
    """The same sum for one of the reference's purchases."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        eid = conn.execute(sa.text("SELECT id FROM student_course_enrollment WHERE stripe_checkout_session_id"
                                   " LIKE 'cs!_ref!_%' ESCAPE '!' ORDER BY id LIMIT 1")).scalar()
        n = conn.execute(ROW_BYTES, {"e": eid}).scalar()
    engine.dispose()
    return int(n or 0)


def _literal(document: str) -> str:
    """A JSON document as a SQL literal pgbench leaves alone: it reads `:name` anywhere as a variable, so
    a colon before a name character is written as the escape \\u003a (jsonb stores the same value)."""
    text = re.sub(r":(?=[A-Za-z0-9_])", r"\\u003a", json.dumps(json.loads(document)))
    return "'" + text.replace("'", "''") + "'"


def pgbench_script(templates: dict, first_id: int) -> str:
    """REFERENCE_SQL for pgbench: each transaction claims the next stored reference row by its id (a sequence
    hands them out, as the broker hands the pipeline its ids), and writes the purchase's rows with the
    pipeline's own JSON documents."""
    return f"""BEGIN;
SELECT id AS inbox_id, subject, payload AS claimed FROM inbox_event WHERE id = (SELECT {first_id - 1} + nextval('bench_claim'))
 FOR UPDATE SKIP LOCKED \\gset
SELECT pg_advisory_xact_lock(hashtext(:subject)) AS l1, pg_advisory_xact_lock(hashtext('pi_' || :inbox_id::text)) AS l2 \\gset
INSERT INTO student (id, email, created_at, updated_at) VALUES ('ref_' || :inbox_id::text, 'ref' || :inbox_id::text || '@bench.test',
 now(), now()) ON CONFLICT (id) DO NOTHING;
SELECT id AS program_id, code, title, status AS program_status, stripe_product_id, stripe_price_id FROM course_program
 WHERE code = 'BENCH' AND deleted_at IS NULL \\gset
SELECT count(*) AS steps, max(label) AS last_label FROM course_step WHERE program_id = :program_id AND deleted_at IS NULL \\gset
SELECT id AS component, kind, quantity FROM course_bundle_component WHERE program_id = :program_id AND deleted_at IS NULL \\gset
INSERT INTO student_course_enrollment (student_id, program_id, status, stripe_checkout_session_id,
 stripe_payment_intent_id, stripe_product_id, stripe_price_id, amount_total, amount_subtotal, amount_tax,
 amount_discount, currency, amount_refunded, fulfilment_metadata, activated_at, created_at, updated_at,
 last_event_sequence) VALUES ('ref_' || :inbox_id::text, :program_id, 'active', 'cs_ref_' || :inbox_id::text, 'pi_ref_' || :inbox_id::text,
 'prod_BENCH', 'price_BENCH', 12000, 12000, 0, 0, 'usd', 0, {_literal(templates["metadata"])}::jsonb, now(), now(), now(), 1)
 ON CONFLICT (stripe_checkout_session_id) DO NOTHING RETURNING id AS eid \\gset
INSERT INTO transition_log (entity, entity_id, from_status, to_status, cause, enrollment_id, at)
 VALUES ('enrollment', :eid::text, NULL, 'active', 'checkout:' || :inbox_id::text, :eid, now());
INSERT INTO student_course_progress (enrollment_id, step_id, status, skipped_ahead, created_at, updated_at)
 SELECT :eid::bigint, id, 'unbooked', false, now(), now() FROM course_step WHERE program_id = :program_id AND deleted_at IS NULL;
INSERT INTO credit_ledger_entry (idempotency_key, student_id, credit_type, entry_type, quantity, cause, enrollment_id,
 created_at) VALUES ('grant:' || 'enrollment:' || :eid::text || ':' || 'private', 'ref_' || :inbox_id::text, 'private', 'grant', 2,
 'enrollment:' || :eid::text, :eid, now());
INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts, enrollment_id,
 sequence, created_at, next_attempt_at) VALUES ('evt_ref1_' || :eid::text, 'ref1:' || :eid::text, 'platform', 'enrollment.created',
 NULL, {_literal(templates["payload1"])}::jsonb, 'pending', 0, :eid, 1, now(), now());
INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts, enrollment_id,
 sequence, created_at, next_attempt_at) VALUES ('msg_ref2_' || :eid::text, 'ref2:' || :eid::text, 'mail', 'enrollment_welcome',
 'ref' || :inbox_id::text || '@bench.test', {_literal(templates["payload2"])}::jsonb, 'pending', 0, :eid, NULL, now(), now());
UPDATE inbox_event SET status = 'processed', attempts = attempts + 1, processed_at = now(), last_error = NULL,
 waiting_for = NULL WHERE id = :inbox_id;
COMMIT;
"""


def measure_pgbench(url: str, count: int, clients: int, templates: dict) -> dict:
    """The issue's reference: pgbench running `pgbench_script` with `clients` clients until every
    reference row is claimed; CPU of pgbench and of its backends from /proc."""
    import shutil
    import subprocess
    import tempfile

    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    run = uuid.uuid4().hex[:6]
    ids = store_purchases(url, count, "ref" + run)
    assert ids == list(range(ids[0], ids[0] + count)), "the reference rows' ids are not contiguous"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SEQUENCE IF EXISTS bench_claim"))
        conn.execute(sa.text("CREATE SEQUENCE bench_claim"))
    engine.dispose()
    name = f"bench-pgbench-{run}"
    u = sa.make_url(url)
    env = {**os.environ, "PGAPPNAME": name, "PGHOST": u.host or "127.0.0.1", "PGPORT": str(u.port or 5432),
           "PGUSER": u.username or "postgres", "PGDATABASE": u.database}
    if u.password:
        env["PGPASSWORD"] = u.password
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(pgbench_script(templates, ids[0]))
        script.flush()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        before = children.ru_utime + children.ru_stime
        started = time.perf_counter()
        with BackendCpu(url, name) as backends:
            out = subprocess.run([pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
                                  "-t", str(count // clients), "-f", script.name], env=env, capture_output=True,
                                 text=True)
        elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr[-2000:]}")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = count // clients * clients
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    return {"rate": tps, "elapsed_s": elapsed, "client_cpu_us": (children.ru_utime + children.ru_stime - before)
            * 1e6 / done, "pg_cpu_us": backends.seconds * 1e6 / done}


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


def _reference_worker(dsn: str, work: list[int], threads: int, run: str, results, templates: dict) -> None:
    """The purchase's rows written as plain statements (REFERENCE_SQL)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        program_id = conn.execute("SELECT id FROM course_program WHERE code = 'BENCH'").fetchone()[0]

    def purchase(conn, inbox_id: int) -> None:
        p = {"inbox_id": inbox_id, "subject": f"payment:ref_{run}_{inbox_id}", "payment": f"pi_ref_{run}_{inbox_id}",
             "program_id": program_id, "student": f"ref_{run}_{inbox_id}", "email": f"ref{inbox_id}@bench.test",
             "cs": f"cs_ref_{run}_{inbox_id}", "pi": f"pi_ref_{run}_{inbox_id}",
             "grant_key": f"grant:ref:{run}:{inbox_id}", "cause": f"checkout:{inbox_id}",
             "bundle_cause": f"enrollment:ref{inbox_id}", "out1": f"ref1:{run}:{inbox_id}",
             "out2": f"ref2:{run}:{inbox_id}", "public1": f"evt_ref1_{run}_{inbox_id}",
             "public2": f"msg_ref2_{run}_{inbox_id}", "metadata": templates["metadata"],
             "payload1": templates["payload1"], "payload2": templates["payload2"]}
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


def _reference_fast_worker(dsn: str, work: list[int], threads: int, run: str, results, templates: dict) -> None:
    """The pipeline's own three statements (tasks.purchases.fast_purchase), by psycopg directly, payloads pre-built."""
    import json

    from tasks.purchases import fast_purchase as fp
    from tasks.inbox.context import lock_key



    def purchase(conn, inbox_id: int) -> None:
        row = conn.execute(fp._CLAIM, (inbox_id,)).fetchone()
        student = f"reff_{run}_{inbox_id}"
        found = conn.execute(fp._PREPARE, {"locks": [lock_key(row[3])], "student": student,
                                           "email": f"{student}@bench.test",
                                           "name": None, "now": utcnow(), "code": "BENCH", "sold": None,
                                           "price": None}).fetchone()
        eid = found[6]
        conn.execute(fp._FULFIL, {
            "id": eid, "student": student, "program": found[0], "cs": f"cs_reff_{run}_{inbox_id}",
            "pi": f"pi_reff_{run}_{inbox_id}", "product": found[9], "price": found[10], "amount_total": 12000,
            "amount_subtotal": 12000, "amount_tax": 0, "amount_discount": 0, "currency": "usd", "metadata": templates["metadata"], "now": utcnow(), "cause": f"checkout:{inbox_id}",
            "steps": [s[0] for s in found[4]], "bundle_cause": f"enrollment:{eid}",
            "grants": json.dumps([{"k": f"grant:enrollment:{eid}:private", "t": "private", "q": 2}]),
            "messages": json.dumps([
                {"u": f"evt_reff1_{eid}", "d": f"reff1:{eid}", "c": "platform", "t": "enrollment.created",
                 "r": None, "p": json.loads(templates["payload1"]), "s": 1},
                {"u": f"msg_reff2_{eid}", "d": f"reff2:{eid}", "c": "mail", "t": "enrollment_welcome",
                 "r": f"{student}@bench.test", "p": json.loads(templates["payload2"]), "s": None}]),
            "inbox_id": inbox_id, "keys": [row[3]], "erased_subjects": []}).fetchone()

    _drain(dsn, work, threads, results, purchase)


def measure_reference(url: str, count: int, processes: int, threads: int, templates: dict, worker=None) -> dict:
    """The same rows as a purchase, by psycopg directly, on rows of its own; with the CPU time of the
    client processes and of the PostgreSQL backends serving them."""
    run = uuid.uuid4().hex[:6]
    ids = store_purchases(url, count, "ref" + run)  # inbox rows to claim, like the pipeline's
    name = f"bench-ref-{run}"
    dsn = sa.make_url(with_application_name(url, name)).set(drivername="postgresql").render_as_string(
        hide_password=False)
    results = multiprocessing.Queue()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_before = children.ru_utime + children.ru_stime
    backends = BackendCpu(url, name).__enter__()
    chunks = [ids[i::processes] for i in range(processes)]
    started = time.perf_counter()
    procs = [multiprocessing.Process(target=worker or _reference_worker,
                                     args=(dsn, chunk, threads, run, results, templates)) for chunk in chunks]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - started
    backends.__exit__()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = children.ru_utime + children.ru_stime - children_before
    return {"rate": count / elapsed, "elapsed_s": elapsed, "client_cpu_us": client_s * 1e6 / count,
            "pg_cpu_us": backends.seconds * 1e6 / count}


def _median(runs: list[dict]) -> dict:
    return dict(sorted(runs, key=lambda r: r["rate"])[len(runs) // 2], rates=[r["rate"] for r in runs])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes (`coursepipe worker`'s default)")
    parser.add_argument("--threads", type=int, default=8, help="threads each (`coursepipe worker`'s default)")
    parser.add_argument("--clients", type=int, default=4, help="reference clients: one process and connection each")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds of the three; medians shown")
    args = parser.parse_args(argv)

    runs = {"pipeline": [], "reference": [], "own_sql": []}
    for _ in range(args.repeat):  # each round on a fresh database: the same table sizes every round
        url = fresh_database("coursepipe_bench_fulfil")
        seed_course(url, steps=STEPS)
        env = env_for(url, f"bench-{uuid.uuid4().hex[:8]}")
        runs["pipeline"].append(measure_pipeline(url, env, args.count, args.processes, args.threads))
        templates = row_templates(url)
        runs["reference"].append(measure_pgbench(url, args.count, args.clients, templates))
        runs["reference"][-1]["row_bytes"] = reference_row_bytes(url)
        runs["pipeline"][-1]["row_bytes"] = templates["row_bytes"]
        runs["own_sql"].append(measure_reference(url, args.count, args.clients, 1, templates,
                                                 worker=_reference_fast_worker))
        drop_namespace(env["REDIS_NAMESPACE"])
    pipeline, reference, own_sql = (_median(runs[name]) for name in ("pipeline", "reference", "own_sql"))
    med = lambda name, key: sorted(r[key] for r in runs[name])[args.repeat // 2]  # noqa: E731
    worker_ms = med("pipeline", "worker_cpu_ms")
    ratio = pipeline["rate"] / reference["rate"] if reference["rate"] else 0.0
    own_ratio = pipeline["rate"] / own_sql["rate"] if own_sql["rate"] else 0.0
    print(f"{'path':<56}{'purchases/s':>12}{'client µs':>11}{'PG µs':>8}   runs (purchases/s)")
    print(f"{'pipeline: coursepipe worker (Redis, Dramatiq, PostgreSQL)':<56}{pipeline['rate']:>12.0f}"
          f"{worker_ms * 1000:>11.0f}{med('pipeline', 'pg_cpu_us'):>8.0f}   "
          + ", ".join(f"{rate:.0f}" for rate in pipeline["rates"]))
    for label, name, r in (("reference: the same rows as plain statements, pgbench", "reference", reference),
                           ("context: the fast path's 3 statements, psycopg", "own_sql", own_sql)):
        print(f"{label:<56}{r['rate']:>12.0f}{med(name, 'client_cpu_us'):>11.0f}{med(name, 'pg_cpu_us'):>8.0f}   "
              + ", ".join(f"{rate:.0f}" for rate in r["rates"]))
    last = runs["pipeline"][-1]
    print(f"ratio pipeline/reference: {ratio:.2f}   pipeline/fast-path SQL: {own_ratio:.2f}   bytes per purchase "
          f"(enrollment, transition, progress, grant, outbox rows): pipeline {last['row_bytes']}, reference "
          f"{runs['reference'][-1]['row_bytes']}   last round: processed {last['processed']}/{args.count}, inbox "
          f"{last['counts']}, enrollments {last['enrollments']}, progress rows {last['progress_rows']}, ledger rows "
          f"{last['ledger_rows']}   (worker {args.processes} processes x {args.threads} threads, references "
          f"{args.clients} clients, {args.repeat} rounds; CPU per purchase from /proc)")
    return {"pipeline": pipeline, "reference": reference, "own_sql": own_sql, "ratio": ratio, "own_ratio": own_ratio,
            "worker_cpu_ms": worker_ms}


if __name__ == "__main__":
    main()
