"""Dramatiq queue depths for the dashboard and /metrics, read from the broker itself.

Redis keys as Dramatiq's dispatch.lua lays them out, or the embedded (stub) broker's own queues.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("coursepipe.workers")

DELAY_SUFFIX = ".DQ"
DEAD_SUFFIX = ".XQ"


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int  # waiting to be fetched by a worker
    delayed: int  # retries and delayed sends (the queue's .DQ, fetched or not)
    in_flight: int  # fetched by a worker, not yet acknowledged
    dead: int  # dead-lettered (Dramatiq gave up; the inbox row is what gets replayed)

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "ready": self.ready, "delayed": self.delayed,
                "in_flight": self.in_flight, "dead": self.dead}


def queue_depths(broker, queues: list[str] | None = None) -> list[QueueDepth]:
    """Per Dramatiq queue (every declared one, or only `queues`), read from the broker: Redis keys, or the
    embedded broker's own queues."""
    if hasattr(broker, "client") and hasattr(broker, "namespace"):
        return _redis_depths(broker, queues)
    if hasattr(broker, "dead_letters_by_queue"):
        return _stub_depths(broker, queues)
    return []


def messages_held(broker, queue: str) -> int | None:
    """Messages `queue` holds: waiting, fetched and not yet acknowledged, or delayed (retries); None when the
    broker cannot tell (it is unreachable). The sweeper and the outbox relay size their work by it."""
    try:
        depths = queue_depths(broker, [queue])
    except Exception as exc:  # Redis down: the caller's sends fail too, and are logged there
        log.debug("depth of queue %s unknown: %s", queue, exc)
        return None
    return sum(d.ready + d.in_flight + d.delayed for d in depths)


def _canonical_queues(names) -> list[str]:
    return sorted({n[: -len(DELAY_SUFFIX)] if n.endswith(DELAY_SUFFIX) else n for n in names})


def _stub_depths(broker, only: list[str] | None) -> list[QueueDepth]:
    depths = []
    for name in _canonical_queues(broker.queues):
        if only is not None and name not in only:
            continue
        queue = broker.queues.get(name)
        delay_queue = broker.queues.get(name + DELAY_SUFFIX)
        ready = queue.qsize() if queue is not None else 0
        # queue.Queue counts a message until task_done: fetched-but-unfinished ones are in flight
        in_flight = max(queue.unfinished_tasks - ready, 0) if queue is not None else 0
        delayed = delay_queue.unfinished_tasks if delay_queue is not None else 0
        dead = len(broker.dead_letters_by_queue.get(name, ()))
        depths.append(QueueDepth(name, ready, delayed, in_flight, dead))
    return depths


def _redis_depths(broker, only: list[str] | None) -> list[QueueDepth]:
    """Keys as dispatch.lua lays them out: `<ns>:<q>` (list of ids), `<ns>:<q>.DQ`, `<ns>:<q>.XQ` (zset),
    `<ns>:__acks__.<worker id>.<q>` (fetched, unacked) for each worker in `<ns>:__heartbeats__`."""
    client, ns = broker.client, broker.namespace
    queues = _canonical_queues(only if only is not None else broker.get_declared_queues())
    workers = [w.decode() if isinstance(w, bytes) else w for w in client.zrange(f"{ns}:__heartbeats__", 0, -1)]
    pipe = client.pipeline(transaction=False)
    for q in queues:
        pipe.llen(f"{ns}:{q}")
        pipe.llen(f"{ns}:{q}{DELAY_SUFFIX}")
        pipe.zcard(f"{ns}:{q}{DEAD_SUFFIX}")
        for w in workers:
            pipe.scard(f"{ns}:__acks__.{w}.{q}")
            pipe.scard(f"{ns}:__acks__.{w}.{q}{DELAY_SUFFIX}")
    values = iter(pipe.execute())
    depths = []
    for q in queues:
        ready, delayed_waiting, dead = next(values), next(values), next(values)
        in_flight = delayed_held = 0
        for _ in workers:
            in_flight += next(values)
            delayed_held += next(values)  # a worker holds delayed messages until their eta
        depths.append(QueueDepth(q, ready, delayed_waiting + delayed_held, in_flight, dead))
    return depths
