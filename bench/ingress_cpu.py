"""In-process CPU per request of the ingress: signed `student.upserted` platform webhooks straight into
the WSGI app (no HTTP server, no client), on PostgreSQL + Redis, CPU clock of this process only.

    .venv/bin/python bench/ingress_cpu.py [--requests 3000] [--batches 5] [--profile out.prof] [--app minimal]

Prints the CPU µs per request of each batch (each on new events: a repeated event takes the cheaper
duplicate path) and their median. What this leaves out (PostgreSQL's and Redis's own CPU, gunicorn)
is measured by bench/ingest.py.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SECRETS, drop_namespace, env_for, fresh_database  # noqa: E402
from tasks.signatures import sign  # noqa: E402


def events(count: int) -> list[tuple[str, bytes]]:
    secret = SECRETS["PLATFORM_WEBHOOK_SECRET"]
    now = datetime.now(timezone.utc).isoformat()
    t = int(time.time())
    out = []
    for n in range(count):
        body = json.dumps({"id": f"bench_{uuid.uuid4().hex}", "type": "student.upserted", "occurred_at": now,
                           "data": {"student_id": f"stu_{n % 5000}", "email": f"s{n}@bench.test",
                                    "name": f"Student {n}", "timezone": "Europe/Berlin"}}).encode()
        out.append((sign(body, secret, t), body))
    return out


def environ(header: str, body: bytes) -> dict:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/webhooks/platform", "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_PLATFORM_SIGNATURE": header, "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--profile", help="write a cProfile (CPU clock) of the batches to this file")
    parser.add_argument("--app", choices=("ours", "minimal"), default="ours",
                        help="minimal: bench/minimal_ingress.py, the issue-21 reference, in the same harness")
    args = parser.parse_args(argv)

    url = fresh_database("coursepipe_bench_ingress_cpu")
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    os.environ.update(env_for(url, namespace))
    if args.app == "minimal":
        from bench.ingest import create_minimal_table

        create_minimal_table(url)
        from bench.minimal_ingress import app
    else:
        from ingress.wsgi import app  # noqa: E402  (builds the runtime from the environment)

    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(status)

    def run(batch):
        for header, body in batch:
            for chunk in app(environ(header, body), start_response):
                pass

    run(events(500))  # warm-up: connections opened, caches filled
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
    figures = []
    for _ in range(args.batches):
        batch = events(args.requests)
        statuses.clear()
        if profiler:
            profiler.enable()
        start = time.process_time()
        run(batch)
        figures.append((time.process_time() - start) * 1e6 / args.requests)
        if profiler:
            profiler.disable()
        assert statuses == ["200 OK"] * args.requests, set(statuses)
    if profiler:
        profiler.dump_stats(args.profile)
    drop_namespace(namespace)
    print("CPU µs/request per batch: " + ", ".join(f"{f:.0f}" for f in figures)
          + f"; median {sorted(figures)[len(figures) // 2]:.0f}")


if __name__ == "__main__":
    main()
