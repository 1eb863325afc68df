"""CPU per `workers.broker.enqueue` of one inbox message on Redis (the ingress's send), in this process:

    .venv/bin/python bench/enqueue_cpu.py [checkout]
    .venv/bin/python bench/enqueue_cpu.py --ways

`checkout` (default: this one) is the source tree whose `workers.broker` is measured, so that two
checkouts can be compared alternately with the same script. 5 batches of 4,000 sends; the medians.
`--ways`: the same message written by Dramatiq's dispatch script (`RedisBroker.do_enqueue`), by a
MULTI/HSET/RPUSH/EXEC redis-py pipeline, by the two-command script `workers.broker` uses, and a bare
LPUSH of an id (the minimal ingress's), alternating, in this process.
"""
import sys
import time
import uuid
from pathlib import Path

WAYS = "--ways" in sys.argv
args = [a for a in sys.argv[1:] if a != "--ways"]
root = args[0] if args else str(Path(__file__).resolve().parents[1])
sys.path.insert(0, root)

import dramatiq  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402

from workers.broker import enqueue  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"

broker = RedisBroker(url=REDIS_URL, namespace=f"bench-{uuid.uuid4().hex[:8]}")
actor = dramatiq.Actor(lambda inbox_id, purchase=False: None, broker=broker, actor_name="process_inbox_event",
                       queue_name="inbox", priority=0, options={})
N = 4000


def measure(send) -> list[float]:
    start = time.process_time()
    for n in range(N):
        send(n)
    return (time.process_time() - start) * 1e6 / N


if WAYS:
    from workers.broker import _ENQUEUE_SCRIPT

    encoder = dramatiq.get_encoder()
    queue = f"{broker.namespace}:inbox"
    script = broker.client.register_script(_ENQUEUE_SCRIPT)

    def fields(n):
        rid = str(uuid.uuid4())
        return rid, encoder.encode({"queue_name": "inbox", "actor_name": "process_inbox_event", "args": (n,),
                                    "kwargs": {}, "options": {"redis_message_id": rid},
                                    "message_id": str(uuid.uuid4()), "message_timestamp": int(time.time() * 1000)})

    def dispatch_script(n):
        broker.do_enqueue("inbox", *fields(n))

    def multi_pipeline(n):
        rid, data = fields(n)
        with broker.client.pipeline(transaction=True) as pipe:
            pipe.hset(queue + ".msgs", rid, data)
            pipe.rpush(queue, rid)
            pipe.execute()

    def two_command_script(n):
        rid, data = fields(n)
        script(keys=[queue + ".msgs", queue], args=[rid, data])

    def bare_lpush(n):
        broker.client.lpush(queue + ".ids", n)

    ways = {"dispatch script": dispatch_script, "MULTI pipeline": multi_pipeline,
            "two-command script": two_command_script, "bare LPUSH": bare_lpush}
    figures = {name: [] for name in ways}
    for _ in range(5):
        for name, send in ways.items():
            figures[name].append(measure(send))
    for name, values in figures.items():
        print(f"{name:<20} CPU µs a send: " + " ".join(f"{x:.1f}" for x in values)
              + f"; median {sorted(values)[2]:.1f}")
else:
    figures = [measure(lambda n: enqueue(actor, n)) for _ in range(5)]
    print(f"{root}: enqueue CPU µs: " + " ".join(f"{x:.1f}" for x in figures) + f"; median {sorted(figures)[2]:.1f}")
keys = list(broker.client.scan_iter(f"{broker.namespace}*"))
if keys:
    broker.client.delete(*keys)
