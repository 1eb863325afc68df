"""The Dramatiq broker: Redis when REDIS_URL is set, otherwise the in-process broker of `serve`."""
from __future__ import annotations

import time
from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import get_encoder
from dramatiq.middleware import Retries

from workers.queues import INBOX_QUEUE

MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 60_000
MAX_RETRIES = 8

# A Redis consumer that finds its queue empty backs off, up to its worker timeout (Dramatiq's default:
# 1 s), before it polls again. On the inbox queue that back-off is the wait between a quiet system's
# acknowledged webhook and its fulfilment, so its consumer polls at most INBOX_IDLE_POLL_MS apart; the
# other queues (mail and callbacks out, jobs) at most IDLE_POLL_MS apart (idle cost: a few Redis calls
# per second per queue).
INBOX_IDLE_POLL_MS = 20
IDLE_POLL_MS = 100


class QueuePollIntervals(dramatiq.Middleware):
    """Idle poll ceilings (ms) for consumer threads, per queue with a default; Dramatiq has one timeout
    for the whole worker, and the `dramatiq` command line has no option for it."""

    def __init__(self, ceilings: dict[str, int], default: int | None = None):
        self.ceilings = ceilings
        self.default = default

    def after_consumer_thread_boot(self, broker, thread):
        # runs in the consumer thread before it opens its consumer, which reads the timeout once
        ceiling = self.ceilings.get(thread.queue_name, self.default)
        if ceiling is not None:
            thread.worker_timeout = min(thread.worker_timeout, ceiling)


def make_broker(settings) -> dramatiq.Broker:
    if settings.redis_url:
        broker = RedisBroker(url=settings.redis_url, namespace=settings.redis_namespace)
        broker.add_middleware(QueuePollIntervals({INBOX_QUEUE: INBOX_IDLE_POLL_MS}, default=IDLE_POLL_MS))
    else:
        # The embedded default: messages live in this process; the inbox is still the source of truth.
        broker = StubBroker()
        broker.emit_after("process_boot")
    for middleware in broker.middleware:
        if isinstance(middleware, Retries):
            middleware.min_backoff = MIN_BACKOFF_MS
            middleware.max_backoff = MAX_BACKOFF_MS
            middleware.max_retries = MAX_RETRIES
    dramatiq.set_broker(broker)
    return broker


def start_embedded_worker(broker: dramatiq.Broker, *, threads: int = 4) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=IDLE_POLL_MS)
    worker.start()
    return worker


# Dramatiq's RedisBroker enqueues through its `dispatch` script, whose every call also writes the sender's
# heartbeat (a ZADD) and may run queue maintenance: both serve consumers (their acks, dead workers' messages),
# which run them on every fetch themselves. A sender only needs the script's "enqueue" branch: the message
# in the queue's hash, its id at the end of the queue's list, atomically.
_ENQUEUE_SCRIPT = "redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) return redis.call('rpush', KEYS[2], ARGV[1])"
_NO_HOOK = (dramatiq.Middleware.before_enqueue, dramatiq.Middleware.after_enqueue)


def _enqueue_hooks(broker: RedisBroker) -> bool:
    """Whether a middleware of `broker` has enqueue hooks (none of the ingress's has; a `Message` is then
    built for them)."""
    cached = broker.__dict__.get("_coursepipe_enqueue_hooks")
    if cached is None or cached[0] != len(broker.middleware):
        hooked = any((type(m).before_enqueue, type(m).after_enqueue) != _NO_HOOK for m in broker.middleware)
        cached = broker.__dict__["_coursepipe_enqueue_hooks"] = (len(broker.middleware), hooked)
    return cached[1]


def _enqueue_script(broker: RedisBroker):
    script = broker.__dict__.get("_coursepipe_enqueue_script")
    if script is None:
        script = broker.__dict__["_coursepipe_enqueue_script"] = broker.client.register_script(_ENQUEUE_SCRIPT)
    return script


def enqueue(actor: dramatiq.Actor, *args, **kwargs) -> None:
    """`actor.send(*args, **kwargs)`. On Redis it writes what `RedisBroker.enqueue` writes — the same
    message (fields in `Message`'s order, a uuid4 `message_id`, the millisecond `message_timestamp`, a
    uuid4 `redis_message_id` option), encoded by Dramatiq's encoder, HSET in `<namespace>:<queue>.msgs`
    and RPUSHed on `<namespace>:<queue>` — as the dispatch script's "enqueue" does, in one atomic script
    call without its heartbeat and maintenance (above). Middleware enqueue hooks run as `send` runs them,
    around the write, if the broker has any. The ingress sends one message per webhook: this costs about
    half of `RedisBroker.enqueue`'s CPU (docs/performance.md, "Second pass on the ingress")."""
    broker = actor.broker
    if type(broker) is not RedisBroker:
        actor.send(*args, **kwargs)
        return
    queue_name = actor.queue_name
    redis_message_id = str(uuid4())
    fields = {"queue_name": queue_name, "actor_name": actor.actor_name, "args": args, "kwargs": kwargs,
              "options": {"redis_message_id": redis_message_id}, "message_id": str(uuid4()),
              "message_timestamp": int(time.time() * 1000)}
    message = dramatiq.Message(**fields) if _enqueue_hooks(broker) else None
    if message is not None:
        broker.emit_before("enqueue", message, None)
    queue = f"{broker.namespace}:{queue_name}"
    _enqueue_script(broker)(keys=[queue + ".msgs", queue], args=[redis_message_id, get_encoder().encode(fields)])
    if message is not None:
        broker.emit_after("enqueue", message, None)
