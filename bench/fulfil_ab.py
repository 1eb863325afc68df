"""Fulfilment, two checkouts at once: each drains the same number of queued purchases (databases and
Redis namespaces of its own) with its own `dramatiq workers.app`, both started together, so that whatever
else the machine does falls on both alike. Prints each side's CPU per purchase (its worker processes, from
the first processed row on, and its PostgreSQL backends), round by round.

    .venv/bin/python bench/fulfil_ab.py BEFORE_CHECKOUT [--after CHECKOUT] [--count 6000] [--rounds 3]

Rates alternate run to run by ±15 % on this machine (docs/performance.md); CPU per purchase measured side by
side moves much less. Drain times are not comparable: the side that finishes first leaves the machine to
the other.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    BackendCpu,
    drop_namespace,
    env_for,
    fresh_database,
    inbox_counts,
    seed_course,
    tree_cpu_seconds,
    with_application_name,
)
from bench.fulfil import STEPS, enqueue, store_purchases  # noqa: E402


def _prepare(name: str, checkout: Path, count: int) -> dict:
    url = fresh_database(f"coursepipe_bench_ab_{name}", checkout)  # each side's own migrations
    seed_course(url, steps=STEPS)
    env = env_for(url, f"bench-{uuid.uuid4().hex[:8]}")
    enqueue(env, store_purchases(url, count, uuid.uuid4().hex[:6]))
    app = f"bench-ab-{name}-{uuid.uuid4().hex[:4]}"
    env = {**env, "DATABASE_URL": with_application_name(url, app), "PYTHONPATH": str(checkout)}
    return {"url": url, "env": env, "checkout": checkout, "app": app}


def one_round(checkouts: dict[str, Path], count: int, processes: int, threads: int) -> dict[str, dict]:
    sides = {name: _prepare(name, checkout, count) for name, checkout in checkouts.items()}
    for side in sides.values():
        side["backends"] = BackendCpu(side["url"], side["app"]).__enter__()
        side["proc"] = subprocess.Popen(
            [sys.executable, "-m", "dramatiq", "workers.app", "--processes", str(processes), "--threads", str(threads)],
            env=side["env"], cwd=side["checkout"], start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        booting, draining = set(sides), set(sides)
        while draining and time.monotonic() - started < 600:
            for name in list(booting):  # worker start-up excluded: CPU from the first processed row on
                done = inbox_counts(sides[name]["url"]).get("processed", 0)
                if done:
                    sides[name].update(cpu0=tree_cpu_seconds(sides[name]["proc"].pid), done0=done)
                    booting.discard(name)
            for name in list(draining - booting):
                if inbox_counts(sides[name]["url"]).get("pending", 0) == 0:
                    sides[name].update(cpu1=tree_cpu_seconds(sides[name]["proc"].pid),
                                       seconds=time.monotonic() - started)
                    draining.discard(name)
            time.sleep(0.01 if booting else 0.1)
    finally:
        for side in sides.values():
            os.killpg(side["proc"].pid, signal.SIGTERM)
            side["proc"].wait(timeout=60)
            side["backends"].__exit__()
    results = {}
    for name, side in sides.items():
        processed = inbox_counts(side["url"]).get("processed", 0)
        timed = max(1, processed - side.get("done0", 0))
        results[name] = {"processed": processed, "seconds": side.get("seconds", float("nan")),
                         "worker_us": (side.get("cpu1", 0.0) - side.get("cpu0", 0.0)) * 1e6 / timed,
                         "pg_us": side["backends"].seconds * 1e6 / max(1, processed)}
        drop_namespace(side["env"]["REDIS_NAMESPACE"])
    return results


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("before", type=Path, help="a checkout of the code to compare with (e.g. a git worktree)")
    parser.add_argument("--after", type=Path, default=ROOT, help="default: this checkout")
    parser.add_argument("--count", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    rounds = []
    for n in range(args.rounds):
        r = one_round(checkouts, args.count, args.processes, args.threads)
        rounds.append(r)
        print(f"round {n + 1}: " + "   ".join(
            f"{name}: worker {v['worker_us']:5.0f} µs, PostgreSQL {v['pg_us']:5.0f} µs a purchase "
            f"({v['processed']}/{args.count} processed)" for name, v in r.items()), flush=True)
    for name in checkouts:
        worker = sorted(r[name]["worker_us"] for r in rounds)[len(rounds) // 2]
        pg = sorted(r[name]["pg_us"] for r in rounds)[len(rounds) // 2]
        print(f"median {name}: worker {worker:.0f} µs, PostgreSQL {pg:.0f} µs a purchase ({checkouts[name]})")
    return rounds


if __name__ == "__main__":
    main()
