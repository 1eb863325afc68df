"""The Dramatiq broker: Redis when REDIS_URL is set, otherwise the in-process broker of `serve`."""
from __future__ import annotations

from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
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


def enqueue(actor: dramatiq.Actor, *args, **kwargs) -> None:
    """`actor.send(*args, **kwargs)`. On Redis it writes what `RedisBroker.enqueue` writes (the message with
    its `redis_message_id`, through the same dispatch script, between the same middleware hooks) without
    building the message twice (`Message.copy`): the ingress sends one per webhook, and the copy, the
    option merging and the debug line cost ~15 µs of its Python there."""
    broker = actor.broker
    if type(broker) is not RedisBroker:
        actor.send(*args, **kwargs)
        return
    redis_message_id = str(uuid4())
    message = dramatiq.Message(queue_name=actor.queue_name, actor_name=actor.actor_name, args=args, kwargs=kwargs,
                               options={"redis_message_id": redis_message_id})
    broker.emit_before("enqueue", message, None)
    broker.do_enqueue(message.queue_name, redis_message_id, message.encode())
    broker.emit_after("enqueue", message, None)
