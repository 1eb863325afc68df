"""Ingest benchmark: verified-and-stored platform webhooks/s and latency through gunicorn on
PostgreSQL + Redis, next to a bare Flask endpoint measured in the same run with the same config.

    .venv/bin/python bench/ingest.py [--seconds 10] [--workers 4] [--connections 32] [--repeat 3]
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

from bench.common import SECRETS, drop_namespace, env_for, fresh_database, gunicorn, run_wrk  # noqa: E402
from tasks.signatures import sign  # noqa: E402


WARM_UP_SECONDS = 3
PACED_RATE = 800


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
        n = conn.execute(sa.text("SELECT count(*) FROM inbox_event")).scalar()
    engine.dispose()
    return n


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per endpoint, alternating; medians shown")
    args = parser.parse_args(argv)

    url = fresh_database("coursepipe_bench_ingest")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    env = env_for(url, namespace)
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
        warm_args = [str(warm_events), "2"]
        # both servers up at once and warmed up alike (every worker booted and connected) on events of
        # their own; then the measured runs alternate between them, so that a drift of the machine's
        # speed during the benchmark falls on both, and the medians are compared
        with gunicorn("bench.bare_app:app", env, args.workers, args.threads) as bare, \
                gunicorn("ingress.wsgi:app", env, args.workers, args.threads) as ingress:
            run_wrk(bare, warm_args, WARM_UP_SECONDS, args.connections)
            run_wrk(ingress, warm_args, WARM_UP_SECONDS, args.connections)
            before = count_rows(url)
            runs = {"bare": [], "ingest": []}
            for path in events:
                runs["bare"].append(run_wrk(bare, [str(path), "2"], args.seconds, args.connections))
                runs["ingest"].append(run_wrk(ingress, [str(path), "2"], args.seconds, args.connections))
            for name, measured in runs.items():
                results[name] = dict(sorted(measured, key=lambda r: r["rate"])[len(measured) // 2],
                                     rates=[r["rate"] for r in measured])
            # paced: each connection pauses after each answer (wrk's delay hook, ~3 ms of service time
            # allowed for) so that together they offer about PACED_RATE requests/s; the table shows the rate
            pause_ms = max(1, int(args.connections * 1000 / PACED_RATE) - 3)
            results["paced"] = run_wrk(ingress, [str(paced_events), "2", str(pause_ms)], args.seconds,
                                       args.connections)
    results["rows_stored"] = count_rows(url) - before  # the measured and the paced runs
    drop_namespace(namespace)
    ratio = results["ingest"]["rate"] / results["bare"]["rate"]
    print(f"{'endpoint':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for name, label in (("ingest", "verify+store+enqueue"), ("paced", f"same, paced (~{PACED_RATE}/s offered)"),
                        ("bare", "bare Flask (reference)")):
        r = results[name]
        print(f"{label:<28}{r['rate']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['errors']:>10}")
    for name in ("ingest", "bare"):
        print(f"{name} runs: " + ", ".join(f"{rate:.0f}" for rate in results[name]["rates"]) + " req/s")
    print(f"ratio ingest/bare (medians): {ratio:.2f}   rows stored: {results['rows_stored']}   "
          f"(gunicorn {args.workers} workers x {args.threads} threads, {args.connections} connections, "
          f"{os.cpu_count()} cores)")
    results["ratio"] = ratio
    return results


if __name__ == "__main__":
    main()
