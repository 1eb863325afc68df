"""workers.broker.enqueue writes to Redis what actor.send writes (a real Dramatiq worker consumes both
alike), runs the enqueue middleware hooks when the broker has any, and is `actor.send` on other brokers."""
import json
import threading

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage

from workers.broker import enqueue


@pytest.fixture
def redis_broker(redis_url, redis_namespace):
    broker = RedisBroker(url=redis_url, namespace=redis_namespace)
    yield broker
    broker.close()


def _stored(broker, queue_name):
    """The messages waiting on a queue, in order, as raw bytes."""
    ids = broker.client.lrange(f"{broker.namespace}:{queue_name}", 0, -1)
    return [broker.client.hget(f"{broker.namespace}:{queue_name}.msgs", i) for i in ids], ids


def _actor(broker, fn=None):
    def process(inbox_id, purchase=False):
        pass

    return dramatiq.Actor(fn or process, broker=broker, actor_name="process", queue_name="inbox", priority=0,
                          options={"max_retries": 20})


def test_enqueue_writes_what_send_writes(redis_broker):
    actor = _actor(redis_broker)
    actor.send(7, purchase=True)
    enqueue(actor, 7, purchase=True)
    enqueue(actor, 8)
    raw, ids = _stored(redis_broker, "inbox")
    sent, ours, other = (json.loads(r) for r in raw)
    # the same JSON fields in the same order, as the same types
    assert list(ours) == list(sent) == list(dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={},
                                                               options={}).asdict())
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in sent.items()}
    for field in ("queue_name", "actor_name", "args", "kwargs"):
        assert ours[field] == sent[field]
    assert ours["options"].keys() == sent["options"].keys() == {"redis_message_id"}
    # each message's list entry is its redis_message_id; every id is new
    assert [i.decode() for i in ids] == [m["options"]["redis_message_id"] for m in (sent, ours, other)]
    assert len({m["message_id"] for m in (sent, ours, other)} | {i.decode() for i in ids}) == 6
    assert ours["message_timestamp"] >= sent["message_timestamp"]
    assert (other["args"], other["kwargs"]) == ([8], {})
    decoded = dramatiq.Message.decode(raw[1])
    assert (decoded.args, decoded.kwargs, decoded.message_id) == ((7,), {"purchase": True}, ours["message_id"])


def test_enqueue_writes_no_heartbeat(redis_broker):
    enqueue(_actor(redis_broker), 1)
    keys = {k.decode() for k in redis_broker.client.scan_iter(f"{redis_broker.namespace}*")}
    assert keys == {f"{redis_broker.namespace}:inbox", f"{redis_broker.namespace}:inbox.msgs"}


def test_a_worker_consumes_enqueue_as_it_consumes_send(redis_url, redis_namespace):
    """A real Dramatiq worker on real Redis, on a broker of its own: the same actor runs with the same
    arguments and sees the same queue and options for a message from `enqueue` as for one from `send`."""
    sender = RedisBroker(url=redis_url, namespace=redis_namespace)
    consumer = RedisBroker(url=redis_url, namespace=redis_namespace)
    consumer.add_middleware(CurrentMessage())
    seen, done = [], threading.Event()

    def process(inbox_id, purchase=False):
        message = CurrentMessage.get_current_message()
        seen.append((inbox_id, purchase, message.queue_name, message.actor_name, message.args, message.kwargs,
                     sorted(message.options)))
        if len(seen) == 4:
            done.set()

    _actor(consumer, process)
    actor = _actor(sender)
    actor.send(1)
    enqueue(actor, 1)
    actor.send(2, purchase=True)
    enqueue(actor, 2, purchase=True)
    worker = dramatiq.Worker(consumer, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        assert done.wait(10), seen
        worker.join()
    finally:
        worker.stop()
        sender.close()
        consumer.close()
    assert seen[0] == seen[1] == (1, False, "inbox", "process", (1,), {}, ["redis_message_id"])
    assert seen[2] == seen[3] == (2, True, "inbox", "process", (2,), {"purchase": True}, ["redis_message_id"])
    # acknowledged: nothing left in the queue, its hash or the worker's acks
    assert not [k for k in consumer.client.scan_iter(f"{redis_namespace}:inbox*")]


def test_enqueue_runs_the_enqueue_hooks_when_there_are_some(redis_broker):
    seen = []

    class Spy(dramatiq.Middleware):
        def before_enqueue(self, broker, message, delay):
            seen.append(("before", message.message_id, delay))

        def after_enqueue(self, broker, message, delay):
            seen.append(("after", message.message_id, delay))

    actor = _actor(redis_broker)
    enqueue(actor, 6)  # no hook yet
    redis_broker.add_middleware(Spy())
    actor.send(7, purchase=True)
    enqueue(actor, 7, purchase=True)
    raw, _ids = _stored(redis_broker, "inbox")
    assert [(kind, delay) for kind, _id, delay in seen] == [("before", None), ("after", None)] * 2
    assert seen[2][1] == seen[3][1] == json.loads(raw[2])["message_id"]


def test_enqueue_on_another_broker_is_actor_send():
    """The embedded mode's stub broker: `enqueue` is `actor.send`, and a worker runs the message."""
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.emit_after("process_boot")
    ran = []
    actor = dramatiq.Actor(lambda inbox_id, purchase=False: ran.append((inbox_id, purchase)), broker=broker,
                           actor_name="p", queue_name="inbox", priority=0, options={})
    enqueue(actor, 3, purchase=True)
    assert broker.queues["inbox"].qsize() == 1
    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        broker.join("inbox", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    assert ran == [(3, True)]


def _sender(broker):
    from workers.broker import _send_connections

    return _send_connections(broker)


def test_enqueue_keeps_its_connection_and_replaces_one_redis_closed(redis_broker):
    actor = _actor(redis_broker)
    enqueue(actor, 1)
    sender = _sender(redis_broker)
    (conn,) = sender.idle
    conn.send_command("CLIENT", "ID")
    client_id = conn.read_response()
    enqueue(actor, 2)
    assert sender.idle == [conn]  # the same connection, kept
    redis_broker.client.client_kill_filter(_id=client_id)  # as a Redis restart or an idle timeout would
    enqueue(actor, 3)  # the dead connection fails, a new one sends it
    assert len(sender.idle) == 1 and sender.idle[0] is not conn
    raw, _ids = _stored(redis_broker, "inbox")
    assert [json.loads(r)["args"] for r in raw] == [[1], [2], [3]]


def test_enqueue_loads_its_script_when_redis_does_not_know_it(redis_broker):
    """As after a restarted or flushed Redis (here: a digest Redis never saw, so as not to flush the scripts of
    the other tests sharing this Redis)."""
    actor = _actor(redis_broker)
    enqueue(actor, 1)
    sender = _sender(redis_broker)
    real, sender.sha = sender.sha, "0" * 40
    enqueue(actor, 2)
    assert sender.sha == real
    raw, _ids = _stored(redis_broker, "inbox")
    assert [json.loads(r)["args"] for r in raw] == [[1], [2]]


def test_enqueue_when_redis_is_unreachable_raises_and_keeps_no_connection(redis_url, redis_namespace):
    broker = RedisBroker(url="redis://127.0.0.1:1/0", namespace=redis_namespace)  # nothing listens on port 1
    import redis

    with pytest.raises(redis.ConnectionError):
        enqueue(_actor(broker), 1)
    assert _sender(broker).idle == []


def test_enqueue_to_a_redis_that_never_answers_gives_up_within_its_timeout(redis_namespace):
    """A listener that accepts connections and never answers (a hung Redis): the enqueue fails after its
    1 s timeout, not redis-py's default seconds, and once, so a webhook's answer is not held behind it."""
    import socket
    import time

    import redis

    from workers.broker import SEND_TIMEOUTS

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        broker = RedisBroker(url=f"redis://127.0.0.1:{listener.getsockname()[1]}/0", namespace=redis_namespace)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            enqueue(_actor(broker), 1)
        elapsed = time.monotonic() - started
        assert SEND_TIMEOUTS["socket_timeout"] <= elapsed < 2 * SEND_TIMEOUTS["socket_timeout"] + 1  # one try
        assert _sender(broker).idle == []
    finally:
        listener.close()
