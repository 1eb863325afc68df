"""workers.broker.enqueue writes to Redis what actor.send writes, and runs the enqueue middleware hooks."""
import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from workers.broker import enqueue


@pytest.fixture
def redis_broker(redis_url, redis_namespace):
    broker = RedisBroker(url=redis_url, namespace=redis_namespace)
    yield broker
    broker.close()


def _stored(broker, queue_name):
    """The messages waiting on a queue, in order, decoded as a worker would."""
    ids = broker.client.lrange(f"{broker.namespace}:{queue_name}", 0, -1)
    return [dramatiq.Message.decode(broker.client.hget(f"{broker.namespace}:{queue_name}.msgs", i)) for i in ids]


def test_enqueue_writes_what_send_writes(redis_broker):
    seen = []

    class Spy(dramatiq.Middleware):
        def before_enqueue(self, broker, message, delay):
            seen.append(("before", message.message_id, delay))

        def after_enqueue(self, broker, message, delay):
            seen.append(("after", message.message_id, delay))

    redis_broker.add_middleware(Spy())

    def process(inbox_id, purchase=False):
        pass

    actor = dramatiq.Actor(process, broker=redis_broker, actor_name="process", queue_name="inbox", priority=0,
                           options={})
    actor.send(7, purchase=True)
    enqueue(actor, 7, purchase=True)
    sent, ours = _stored(redis_broker, "inbox")
    for field in ("queue_name", "actor_name", "args", "kwargs"):
        assert getattr(ours, field) == getattr(sent, field)
    assert ours.options.keys() == sent.options.keys() == {"redis_message_id"}
    assert ours.options["redis_message_id"] != sent.options["redis_message_id"]
    assert ours.message_id != sent.message_id and ours.message_timestamp >= sent.message_timestamp
    assert [(kind, delay) for kind, _id, delay in seen] == [("before", None), ("after", None)] * 2
    assert seen[2][1] == seen[3][1] == ours.message_id


def test_enqueue_on_another_broker_is_actor_send():
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    actor = dramatiq.Actor(lambda inbox_id: None, broker=broker, actor_name="p", queue_name="inbox", priority=0,
                           options={})
    enqueue(actor, 3)
    assert broker.queues["inbox"].qsize() == 1
