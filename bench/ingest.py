"""Ingest benchmark: verified-and-stored platform webhooks/s and latency through gunicorn on
PostgreSQL + Redis, beside two references under the same gunicorn config, in the same run:

- bare Flask (`bench/bare_app.py`): reads the body, answers JSON;
- a minimal durable ingress (`bench/minimal_ingress.py`): HMAC check, JSON parse, one autocommit
  INSERT on a kept-open psycopg connection, LPUSH of the row id, 200 — durable before the answer.

    .venv/bin/python bench/ingest.py [--seconds 10] [--workers 4] [--connections 32] [--repeat 3]

The three servers are up at once; measured runs alternate (bare, minimal, ours, bare, …) and the
medians are compared. Each run also reads CPU time from /proc: the server's gunicorn processes, the
PostgreSQL backends connected to the benchmark's database and redis-server, per request — less
sensitive than req/s to what else the machine is doing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    SECRETS,
    drop_namespace,
    env_for,
    fresh_database,
    gunicorn,
    machine_jiffies,
    pids_cpu_seconds,
    postgres_backends,
    redis_pid,
    run_wrk,
    tree_cpu_seconds,
)
from tasks.signatures import sign  # noqa: E402


WARM_UP_SECONDS = 3
PACED_RATE = 800
LABELS = {"bare": "bare Flask (reference)", "minimal": "minimal durable ingress", "ingest": "ours: verify+store+enqueue"}


def write_events(path: Path, count: int) -> None:
    secret = SECRETS["PLATFORM_WEBHOOK_SECRET"]
    now = datetime.now(timezone.utc).isoformat()
    t = int(time.time())
    with path.open("w") as f:
        for n in range(count):
            body = json.dumps({"id": f"bench_{uuid.uuid4().hex}", "type": "student.upserted", "occurred_at": now,
                               "data": {"student_id": f"stu_{n % 5000}", "email": f"s{n}@bench.test",
                                        "name": f"Student {n}", "timezone": "Europe/Berlin"}})
            f.write(f"{sign(body.encode(), secret, t)}\t{body}\n")


def count_rows(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT (SELECT count(*) FROM inbox_event) + (SELECT count(*) FROM minimal_event)"))
        n = n.scalar()
    engine.dispose()
    return n


def create_minimal_table(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE minimal_event (id bigserial PRIMARY KEY, event_id text UNIQUE NOT NULL,"
                             " payload jsonb NOT NULL)"))
    engine.dispose()


def measured_run(server, url: str, events: Path, seconds: int, connections: int, redis: int | None) -> dict:
    """One wrk run, with the CPU each process group spent per request during it."""
    backends = postgres_backends(url)
    cpu = (tree_cpu_seconds(server.pid), pids_cpu_seconds(backends), pids_cpu_seconds([redis] if redis else []))
    idle, total = machine_jiffies()
    result = run_wrk(server, [str(events), "2"], seconds, connections)
    after = (tree_cpu_seconds(server.pid), pids_cpu_seconds(backends), pids_cpu_seconds([redis] if redis else []))
    idle2, total2 = machine_jiffies()
    requests = max(1.0, result["rate"] * seconds)
    result.update({name: (b - a) * 1e6 / requests for name, a, b in zip(("gunicorn_us", "postgres_us", "redis_us"),
                                                                        cpu, after)})
    result["machine_busy"] = 1 - (idle2 - idle) / max(1, total2 - total)
    return result


def _median(measured: list[dict], key: str) -> float:
    values = sorted(r[key] for r in measured)
    return values[len(values) // 2]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per endpoint, alternating; medians shown")
    args = parser.parse_args(argv)

    url = fresh_database("coursepipe_bench_ingest")
    create_minimal_table(url)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = env_for(url, namespace)
    redis = redis_pid()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # each measured run sends events of its own (a repeated event takes the cheaper duplicate path)
        events = [Path(tmp) / f"events-{n}.tsv" for n in range(args.repeat)]
        for path in events:
            write_events(path, 8000 * args.seconds)
        warm_events = Path(tmp) / "warm-up.tsv"
        write_events(warm_events, 8000 * WARM_UP_SECONDS)
        paced_events = Path(tmp) / "paced.tsv"
        write_events(paced_events, PACED_RATE * args.seconds * 2)
        # the three servers up at once and warmed up alike (every worker booted and connected) on events of
        # their own; then the measured runs alternate between them, so that a drift of the machine's speed
        # during the benchmark falls on all of them, and the medians are compared
        # --threads 1: sync workers (the set-up), one request at a time per process
        kind = "sync" if args.threads == 1 else None
        with gunicorn("bench.bare_app:app", env, args.workers, args.threads, kind) as bare, \
                gunicorn("bench.minimal_ingress:app", env, args.workers, args.threads, kind) as minimal, \
                gunicorn("ingress.wsgi:app", env, args.workers, args.threads, kind) as ingress:
            servers = {"bare": bare, "minimal": minimal, "ingest": ingress}
            for server in servers.values():
                run_wrk(server, [str(warm_events), "2"], WARM_UP_SECONDS, args.connections)
            before = count_rows(url)
            runs = {name: [] for name in servers}
            for path in events:
                for name, server in servers.items():
                    runs[name].append(measured_run(server, url, path, args.seconds, args.connections, redis))
            for name, measured in runs.items():
                results[name] = dict(sorted(measured, key=lambda r: r["rate"])[len(measured) // 2],
                                     rates=[r["rate"] for r in measured],
                                     **{key: _median(measured, key) for key in
                                        ("gunicorn_us", "postgres_us", "redis_us", "machine_busy")})
            # paced: each connection pauses after each answer (wrk's delay hook, ~3 ms of service time
            # allowed for) so that together they offer about PACED_RATE requests/s; the table shows the rate
            pause_ms = max(1, int(args.connections * 1000 / PACED_RATE) - 3)
            results["paced"] = run_wrk(ingress, [str(paced_events), "2", str(pause_ms)], args.seconds,
                                       args.connections)
    results["rows_stored"] = count_rows(url) - before  # the measured and the paced runs
    drop_namespace(namespace)
    results["ratio"] = results["ingest"]["rate"] / results["bare"]["rate"]
    results["ratio_minimal"] = results["ingest"]["rate"] / results["minimal"]["rate"]
    print(f"{'endpoint':<30}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'non-2xx':>8}"
          f"{'gunicorn':>10}{'postgres':>10}{'redis':>8}  µs CPU/request  runs (req/s)")
    for name in ("ingest", "minimal", "bare"):
        r = results[name]
        print(f"{LABELS[name]:<30}{r['rate']:>8.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['errors']:>8}"
              f"{r['gunicorn_us']:>10.0f}{r['postgres_us']:>10.0f}{r['redis_us']:>8.0f}                  "
              + ", ".join(f"{rate:.0f}" for rate in r["rates"]))
    r = results["paced"]
    print(f"{f'ours, paced (~{PACED_RATE}/s offered)':<30}{r['rate']:>8.0f}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}"
          f"{r['errors']:>8}")
    print(f"ratios (medians): ours/minimal {results['ratio_minimal']:.2f}   ours/bare {results['ratio']:.2f}   "
          f"minimal/bare {results['minimal']['rate'] / results['bare']['rate']:.2f}   rows stored: "
          f"{results['rows_stored']}   machine busy during our runs: {results['ingest']['machine_busy']:.0%}   "
          f"(gunicorn {args.workers} workers x {args.threads} threads, {args.connections} connections, "
          f"{os.cpu_count()} cores)")
    return results


if __name__ == "__main__":
    main()
