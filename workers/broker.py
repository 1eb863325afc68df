"""The Dramatiq broker: Redis when REDIS_URL is set, otherwise the in-process broker of `serve`."""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Retries

from coursepipe.settings import Settings

MIN_BACKOFF_MS = 500
MAX_BACKOFF_MS = 60_000
MAX_RETRIES = 8


def make_broker(settings: Settings) -> dramatiq.Broker:
    if settings.redis_url:
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=settings.redis_url, namespace=settings.redis_namespace)
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
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    return worker
