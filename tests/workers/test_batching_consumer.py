"""The workers' Redis consumer fetches a backlog in batches of at least a quarter of its prefetch, sends the
acknowledgements its worker threads record in batches, and loses none: not when Redis refuses a batch,
not when the worker stops. Real Redis, real Dramatiq workers."""
import threading

import dramatiq
import pytest
import redis

from workers.broker import BatchingConsumer, CoursepipeRedisBroker, enqueue

MESSAGES = 300


@pytest.fixture
def broker(redis_url, redis_namespace):
    broker = CoursepipeRedisBroker(url=redis_url, namespace=redis_namespace)
    yield broker
    broker.close()


def _left(broker) -> dict[str, int]:
    """What a queue still holds in Redis: waiting ids, stored messages, and fetched-but-unacknowledged ids."""
    client, ns = broker.client, broker.namespace
    acks = [k for k in client.scan_iter(f"{ns}:__acks__.*")]
    return {"waiting": client.llen(f"{ns}:inbox"), "stored": client.hlen(f"{ns}:inbox.msgs"),
            "unacknowledged": sum(client.scard(k) for k in acks)}


def test_a_backlog_is_fetched_and_acknowledged_in_batches_and_each_message_runs_once(broker):
    ran, done = [], threading.Event()
    lock = threading.Lock()

    def process(n):
        with lock:
            ran.append(n)
            if len(ran) == MESSAGES:
                done.set()

    actor = dramatiq.Actor(process, broker=broker, actor_name="process", queue_name="inbox", priority=0, options={})
    for n in range(MESSAGES):
        enqueue(actor, n)
    fetched, acked = [], []
    fetch, ack_many = broker._dispatch("fetch"), broker.ack_many

    def counting_fetch(queue_name, count):
        messages = fetch(queue_name, count)
        if messages:
            fetched.append(len(messages))
        return messages

    def counting_ack_many(queue_name, ids):
        acked.append(len(ids))
        return ack_many(queue_name, ids)

    broker.do_fetch, broker.ack_many = counting_fetch, counting_ack_many
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=20)  # prefetch 8: fetches of 2 or more
    worker.start()
    try:
        assert done.wait(30), len(ran)
    finally:
        worker.stop()
    assert sorted(ran) == list(range(MESSAGES))
    assert sum(fetched) == MESSAGES
    # each fetch but the queue's tail brought at least the prefetch less the low-water mark
    assert min(fetched[:-1]) >= 8 - int(8 * BatchingConsumer.LOW_WATER), fetched
    assert len(fetched) <= MESSAGES // 2 + 1
    assert sum(acked) == MESSAGES and len(acked) < MESSAGES, acked
    assert _left(broker) == {"waiting": 0, "stored": 0, "unacknowledged": 0}


def _fetch_two(broker):
    actor = dramatiq.Actor(lambda n: None, broker=broker, actor_name="p", queue_name="inbox", priority=0, options={})
    enqueue(actor, 1)
    enqueue(actor, 2)
    consumer = broker.consume("inbox", prefetch=4, timeout=10)
    assert isinstance(consumer, BatchingConsumer)
    first, second = next(consumer), next(consumer)
    assert (first.args, second.args) == ((1,), (2,))
    return consumer, first, second


def test_acknowledgements_refused_by_redis_are_kept_and_sent_by_the_next_consumer(broker):
    consumer, first, second = _fetch_two(broker)
    consumer.ack(first)
    consumer.ack(second)
    assert consumer.outstanding_message_count == 0  # done here: the consumer may fetch more meanwhile
    assert _left(broker)["unacknowledged"] == 2
    real = broker.ack_many

    def refuse(queue_name, ids):
        raise redis.ConnectionError("connection reset")

    broker.ack_many = refuse
    with pytest.raises(dramatiq.errors.ConnectionClosed):
        consumer.send_acks()
    assert _left(broker)["unacknowledged"] == 2
    broker.ack_many = real
    # Dramatiq's consumer thread replaces a consumer closed by a connection error: the new one sends them
    successor = broker.consume("inbox", prefetch=4, timeout=10)
    broker.client.zrem(f"{broker.namespace}:__heartbeats__", broker.broker_id)
    successor.send_acks()
    assert _left(broker) == {"waiting": 0, "stored": 0, "unacknowledged": 0}
    # as Dramatiq's ack does, the call beats the worker's heartbeat (maintenance spares a live worker's acks)
    assert broker.client.zscore(f"{broker.namespace}:__heartbeats__", broker.broker_id) is not None


def test_closing_a_consumer_sends_its_last_acknowledgements(broker):
    consumer, first, second = _fetch_two(broker)
    consumer.ack(first)
    consumer.close()
    left = _left(broker)
    assert (left["stored"], left["unacknowledged"]) == (1, 1)  # the second is still in hand, not lost


def test_acknowledging_when_redis_does_not_know_the_script_loads_it_again(broker):
    """As after a SCRIPT FLUSH or a restarted Redis (here: a digest Redis never saw, not to flush the scripts
    of the other tests sharing this Redis)."""
    consumer, first, second = _fetch_two(broker)
    consumer.ack(first)
    consumer.send_acks()  # the script is registered
    assert _left(broker) == {"waiting": 0, "stored": 1, "unacknowledged": 1}
    broker._ack_script.sha = "0" * 40
    consumer.ack(second)
    consumer.send_acks()
    assert _left(broker) == {"waiting": 0, "stored": 0, "unacknowledged": 0}
