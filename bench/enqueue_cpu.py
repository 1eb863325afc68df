"""CPU per `workers.broker.enqueue` of one inbox message on Redis (the ingress's send), in this process:

    .venv/bin/python bench/enqueue_cpu.py [checkout]

`checkout` (default: this one) is the source tree whose `workers.broker` is measured, so that two
checkouts can be compared alternately with the same script. 5 batches of 4,000 sends; the medians.
"""
import sys
import time
import uuid
from pathlib import Path

root = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1])
sys.path.insert(0, root)

import dramatiq  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402

from workers.broker import enqueue  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"

broker = RedisBroker(url=REDIS_URL, namespace=f"bench-{uuid.uuid4().hex[:8]}")
actor = dramatiq.Actor(lambda inbox_id, purchase=False: None, broker=broker, actor_name="process_inbox_event",
                       queue_name="inbox", priority=0, options={})
N = 4000
figures = []
for _ in range(5):
    start = time.process_time()
    for n in range(N):
        enqueue(actor, n)
    figures.append((time.process_time() - start) * 1e6 / N)
print(f"{root}: enqueue CPU µs: " + " ".join(f"{x:.1f}" for x in figures) + f"; median {sorted(figures)[2]:.1f}")
keys = list(broker.client.scan_iter(f"{broker.namespace}*"))
if keys:
    broker.client.delete(*keys)
