"""The Dramatiq broker: Redis when REDIS_URL is set, otherwise the in-process broker of `serve`."""
from __future__ import annotations

import logging
import os
import threading
import time
from uuid import uuid4

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import current_millis
from dramatiq.errors import ConnectionClosed
from dramatiq.brokers.stub import StubBroker
from dramatiq.message import get_encoder
from dramatiq.middleware import Retries

from workers.queues import INBOX_QUEUE

log = logging.getLogger("coursepipe.broker")

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


# Consumers fetch and acknowledge in batches. Dramatiq's Redis consumer fetches again as soon as one message of
# its prefetch is acknowledged, and each worker thread acknowledges its message with a call of its own to the
# dispatch script: under a backlog, a fetch of a few messages and one more round trip per message. Here
# (`BatchingConsumer`) the consumer lets the messages in hand fall to three quarters of its prefetch before it
# fetches the rest (a quarter or more at a time; at half, worker threads found the work queue empty and
# the end-to-end p99 at 600/s grew), and a worker thread only records its acknowledgement, which the consumer
# thread sends with the others when it next goes to Redis, all in one script call (what Dramatiq's "ack"
# does, for each). A lightly loaded consumer (fewer in hand than that) fetches at once, as Dramatiq's does.
# Acknowledging a little later never loses a message: until its ack lands a message stays in this worker's
# ack set, and is delivered again only if the worker dies first (every actor here is idempotent).
FULL_PAUSE_S = 0.002  # a consumer with enough in hand looks again this much later (sending acks meanwhile)


class UnsentAcks:
    """Acknowledgements recorded by worker threads, not yet sent; kept per queue by the broker, so that a
    consumer that replaces one closed by a connection error sends what its predecessor could not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def add(self, redis_message_id: str) -> None:
        with self._lock:
            self._ids.append(redis_message_id)

    def take(self) -> list[str]:
        with self._lock:
            ids, self._ids = self._ids, []
        return ids

    def put_back(self, ids: list[str]) -> None:
        with self._lock:
            self._ids[:0] = ids


class BatchingConsumer(_RedisConsumer):
    """Dramatiq's Redis consumer with a low-water mark for fetches and batched acknowledgements (above)."""

    LOW_WATER = 0.75  # of the prefetch

    def __init__(self, broker, queue_name, prefetch, timeout):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.low_water = int(prefetch * self.LOW_WATER)
        self.unsent = broker.unsent_acks(queue_name)

    def ack(self, message):
        # a worker thread: the message is done here; the consumer thread sends the ack
        self.unsent.add(message.options["redis_message_id"])
        self.queued_message_ids.discard(message.message_id)

    def send_acks(self) -> None:
        ids = self.unsent.take()
        if not ids:
            return
        try:
            self.broker.ack_many(self.queue_name, ids)
        except redis.ConnectionError as exc:
            self.unsent.put_back(ids)
            raise ConnectionClosed(exc) from None

    def __next__(self):
        if self.message_cache:
            return super().__next__()  # the next message fetched, no call to Redis
        self.send_acks()
        if self.outstanding_message_count <= self.low_water:
            return super().__next__()  # fetch (an empty queue: Dramatiq's back-off)
        time.sleep(FULL_PAUSE_S)  # enough in hand
        return None

    def close(self):
        try:
            self.send_acks()  # the worker threads have stopped: their last acks
        except ConnectionClosed:
            log.warning("acknowledgements of %s not sent (Redis unreachable): the messages are delivered again "
                        "after this worker stops", self.queue_name)
        super().close()


class CoursepipeRedisBroker(RedisBroker):
    """Dramatiq's RedisBroker, whose consumers fetch and acknowledge in batches (`BatchingConsumer`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unsent: dict[str, UnsentAcks] = {}
        self._unsent_lock = threading.Lock()
        self._ack_script = self.client.register_script(_ACK_SCRIPT)  # its digest only: nothing is sent yet

    @property
    def consumer_class(self):
        return BatchingConsumer

    def unsent_acks(self, queue_name: str) -> UnsentAcks:
        with self._unsent_lock:
            return self._unsent.setdefault(queue_name, UnsentAcks())

    def ack_many(self, queue_name: str, redis_message_ids: list[str]) -> None:
        """What Dramatiq's "ack" does for each message (drop it from this worker's ack set and the queue's
        hash; beat the worker's heartbeat), for all of them in one script call."""
        ns = self.namespace  # the keys of Dramatiq's dispatch script (dramatiq/brokers/redis/dispatch.lua)
        self._ack_script(keys=[f"{ns}:__acks__.{self.broker_id}.{queue_name}", f"{ns}:{queue_name}.msgs", f"{ns}:__heartbeats__"],
               args=[current_millis(), self.broker_id, *redis_message_ids])


# Dramatiq's "ack" (dispatch.lua), for many messages: KEYS = the worker's ack set for the queue, the queue's
# message hash, the heartbeats; ARGV = the time (ms), the worker's id, the message ids
_ACK_SCRIPT = """
redis.call('zadd', KEYS[3], ARGV[1], ARGV[2])
for i = 3, #ARGV do
    if redis.call('srem', KEYS[1], ARGV[i]) > 0 then
        redis.call('hdel', KEYS[2], ARGV[i])
    end
end
return #ARGV - 2
"""


def make_broker(settings) -> dramatiq.Broker:
    if settings.redis_url:
        broker = CoursepipeRedisBroker(url=settings.redis_url, namespace=settings.redis_namespace)
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


# An enqueue answers in well under a millisecond; a Redis that accepts connections but does not answer (hung,
# or a network path that drops packets) must not hold a webhook's answer for redis-py's default seconds: the
# event is stored before the enqueue, and the sweeper sends what could not be sent.
SEND_TIMEOUTS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


class _SendConnections:
    """Kept-open Redis connections for `enqueue`, one per thread that ever sent at once (a free list, as
    `Database.direct_autocommit` keeps psycopg ones): redis-py's pool checks a connection out and in, polls
    its socket and records its state for every command, which cost as much CPU as the command itself."""

    def __init__(self, broker: RedisBroker) -> None:
        self.pool = broker.client.connection_pool
        self.sha = broker.client.register_script(_ENQUEUE_SCRIPT).sha  # the digest: nothing is sent yet
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list = []

    def run_script(self, keys: list[str], args: list[str]) -> None:
        """The enqueue script on a kept-open connection; a broken one is dropped and the call made once more
        on a new one (as redis-py retries), then the error is the caller's. A timeout (SEND_TIMEOUTS) is not
        tried again."""
        for last_try in (False, True):
            with self.lock:
                conn = self.idle.pop() if self.idle else None
            if conn is None:
                conn = self.pool.connection_class(**{**self.pool.connection_kwargs, **SEND_TIMEOUTS})
            try:
                self._evalsha(conn, keys, args)
            except redis.TimeoutError:  # a Redis that does not answer will not answer the next try either
                conn.disconnect()
                raise
            except redis.ConnectionError:
                conn.disconnect()
                if last_try:
                    raise
                continue
            except redis.ResponseError:  # an answer: the connection is fine
                self._keep(conn)
                raise
            except BaseException:  # interrupted mid-command: what the socket holds is unknown
                conn.disconnect()
                raise
            self._keep(conn)
            return

    def _evalsha(self, conn, keys, args) -> None:
        conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            conn.read_response()
        except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it, then run it
            conn.send_command("SCRIPT", "LOAD", _ENQUEUE_SCRIPT)
            sha = conn.read_response()
            self.sha = sha.decode() if isinstance(sha, bytes) else sha
            conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            conn.read_response()

    def _keep(self, conn) -> None:
        with self.lock:
            self.idle.append(conn)


def _send_connections(broker: RedisBroker) -> _SendConnections:
    sender = broker.__dict__.get("_coursepipe_send_connections")
    if sender is None or sender.pid != os.getpid():  # none yet, or inherited through a fork: new ones
        sender = broker.__dict__["_coursepipe_send_connections"] = _SendConnections(broker)
    return sender


def enqueue(actor: dramatiq.Actor, *args, **kwargs) -> None:
    """`actor.send(*args, **kwargs)`. On Redis it writes what `RedisBroker.enqueue` writes — the same
    message (fields in `Message`'s order, a uuid4 `message_id`, the millisecond `message_timestamp`, a
    uuid4 `redis_message_id` option), encoded by Dramatiq's encoder, HSET in `<namespace>:<queue>.msgs`
    and RPUSHed on `<namespace>:<queue>` — as the dispatch script's "enqueue" does, in one atomic script
    call without its heartbeat and maintenance (above), on a kept-open connection (`_SendConnections`).
    Middleware enqueue hooks run as `send` runs them, around the write, if the broker has any. The ingress sends one message per webhook: this costs about
    half of `RedisBroker.enqueue`'s CPU (docs/performance.md, "Second pass on the ingress")."""
    broker = actor.broker
    if not isinstance(broker, RedisBroker):
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
    _send_connections(broker).run_script([queue + ".msgs", queue], [redis_message_id, get_encoder().encode(fields)])
    if message is not None:
        broker.emit_after("enqueue", message, None)
