"""Backlog drain: N purchases stored and queued while no worker runs, then drained; time to empty.

    .venv/bin/python bench/backlog.py [--count 60000] [--processes 2] [--threads 4] [--lost]

`--lost`: the purchases are stored but their messages are lost (Redis restarted empty a minute ago); the
bench sends the scheduler's sweep job every 10 s, as the scheduler does, and the workers re-send and drain.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import drop_namespace, dramatiq_workers, env_for, fresh_database, inbox_counts, seed_course  # noqa: E402
from bench.fulfil import enqueue, store_purchases  # noqa: E402

SWEEP_EVERY = 10  # seconds, as the scheduler sends it (scheduler/service.py)


def lost_a_minute_ago(url: str) -> None:
    """The rows as if they had arrived a minute ago and their messages were lost: past the sweep's 30 s."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE inbox_event SET received_at = received_at - interval '60 seconds'"))
    engine.dispose()


def sweeper(env: dict):
    """A function that sends the scheduler's sweep job."""
    from coursepipe.runtime import init_runtime
    from coursepipe.settings import Settings

    actor = init_runtime(Settings.from_env(env)).actors["sweep_inbox"]
    return lambda: actor.send()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=60000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--lost", action="store_true", help="the messages are lost: the sweep re-sends them")
    args = parser.parse_args(argv)
    url = fresh_database("coursepipe_bench_backlog")
    seed_course(url)
    env = env_for(url, f"bench-{uuid.uuid4().hex[:8]}")
    ids = store_purchases(url, args.count, uuid.uuid4().hex[:6])
    sweep = None
    if args.lost:
        lost_a_minute_ago(url)
        sweep = sweeper(env)
    else:
        enqueue(env, ids)
    started = time.monotonic()
    next_sweep = started
    with dramatiq_workers(env, args.processes, args.threads):
        while inbox_counts(url).get("pending", 0) > 0 and time.monotonic() - started < 900:
            if sweep is not None and time.monotonic() >= next_sweep:
                sweep()
                next_sweep += SWEEP_EVERY
            time.sleep(0.5)
        elapsed = time.monotonic() - started
    counts = inbox_counts(url)
    drop_namespace(env["REDIS_NAMESPACE"])
    how = "lost; re-sent by the sweep every 10 s" if args.lost else "queued"
    print(f"backlog of {args.count} purchases ({how}) drained in {elapsed:.1f} s ({args.count / elapsed:.0f}/s, "
          f"worker start-up included); inbox {counts}")
    return {"count": args.count, "seconds": elapsed, "counts": counts}


if __name__ == "__main__":
    main()
