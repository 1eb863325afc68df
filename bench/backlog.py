"""Backlog drain: N purchases stored and queued while no worker runs, then drained; time to empty.

    .venv/bin/python bench/backlog.py [--count 60000] [--processes 2] [--threads 4]
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import drop_namespace, dramatiq_workers, env_for, fresh_database, inbox_counts, seed_course  # noqa: E402
from bench.fulfil import enqueue, store_purchases  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    url = fresh_database("coursepipe_bench_backlog")
    seed_course(url)
    env = env_for(url, f"bench-{uuid.uuid4().hex[:8]}")
    ids = store_purchases(url, args.count, uuid.uuid4().hex[:6])
    enqueue(env, ids)
    started = time.monotonic()
    with dramatiq_workers(env, args.processes, args.threads):
        while inbox_counts(url).get("pending", 0) > 0 and time.monotonic() - started < 900:
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    counts = inbox_counts(url)
    drop_namespace(env["REDIS_NAMESPACE"])
    print(f"backlog of {args.count} purchases drained in {elapsed:.1f} s ({args.count / elapsed:.0f}/s, "
          f"worker start-up included); inbox {counts}")
    return {"count": args.count, "seconds": elapsed, "counts": counts}


if __name__ == "__main__":
    main()
