"""The broker's floor: messages/s and worker CPU per message for an actor that does nothing, through
the same Redis broker, Dramatiq command and processes x threads as the fulfilment benchmark. What is
left of a purchase's cost after this is ours.

    .venv/bin/python bench/broker_floor.py [--count 20000] [--processes 2] [--threads 4]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REDIS_URL, ROOT, drop_namespace, tree_cpu_seconds  # noqa: E402

QUEUE = "floor"


def _broker(namespace: str):
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=os.environ.get("FLOOR_REDIS_URL", REDIS_URL), namespace=namespace)
    dramatiq.set_broker(broker)
    return broker


# the worker side: `dramatiq bench.broker_floor` imports this module with FLOOR_NAMESPACE set
if os.environ.get("FLOOR_NAMESPACE"):
    import dramatiq

    from workers.broker import IDLE_POLL_MS, QueuePollIntervals

    broker = _broker(os.environ["FLOOR_NAMESPACE"])
    broker.add_middleware(QueuePollIntervals({}, default=IDLE_POLL_MS))  # as the project's own workers poll

    @dramatiq.actor(queue_name=QUEUE, broker=broker)
    def noop(n: int) -> None:
        return None


def main(argv=None) -> dict:
    import redis

    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)

    namespace = f"bench-floor-{uuid.uuid4().hex[:8]}"
    import dramatiq

    broker = _broker(namespace)
    sender = dramatiq.Actor(lambda n: None, broker=broker, actor_name="noop", queue_name=QUEUE, priority=0,
                            options={})
    for n in range(args.count):
        sender.send(n)
    client = redis.Redis.from_url(REDIS_URL)
    queue_key = f"{namespace}:{QUEUE}"
    env = {**os.environ, "FLOOR_NAMESPACE": namespace, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "dramatiq", "bench.broker_floor", "--processes",
                             str(args.processes), "--threads", str(args.threads)], env=env, cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        while client.llen(queue_key) >= args.count and time.monotonic() - started < 60:
            time.sleep(0.01)  # workers booting
        cpu0, t0, left0 = tree_cpu_seconds(proc.pid), time.monotonic(), client.llen(queue_key)
        while client.llen(queue_key) > 0 and time.monotonic() - started < 300:
            time.sleep(0.05)
        time.sleep(0.3)  # the last acks
        cpu, elapsed = tree_cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    drop_namespace(namespace)
    rate = left0 / elapsed if elapsed else 0.0
    cpu_ms = cpu * 1000 / max(1, left0)
    print(f"no-op actor: {rate:.0f} messages/s, worker CPU {cpu_ms:.2f} ms per message "
          f"({args.processes} processes x {args.threads} threads, {left0} messages timed)")
    return {"rate": rate, "cpu_ms": cpu_ms}


if __name__ == "__main__":
    main()
