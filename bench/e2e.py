"""End-to-end latency: webhook accepted → enrollment committed (inbox processed_at), p50/p99, at paced
rates and when idle, through gunicorn + Redis + Dramatiq workers + PostgreSQL.

    .venv/bin/python bench/e2e.py [--rates 10,100,600] [--seconds 8]
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402
import stripe  # noqa: E402

from bench.common import drop_namespace, SECRETS, dramatiq_workers, env_for, fresh_database, gunicorn, purchase_event, seed_course  # noqa: E402,E501


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def paced_send(url: str, rate: float, seconds: float, run: str, senders: int = 8,
               sent: dict[str, float] | None = None) -> dict[str, float]:
    """Send purchases at `rate`/s for `seconds`; returns event id -> wall time the 200 came back (and fills
    `sent`, if given: event id -> wall time the request was sent)."""
    total = max(1, int(rate * seconds))
    acked: dict[str, float] = {}
    sent = sent if sent is not None else {}
    lock = threading.Lock()
    start = time.time() + 0.2

    def sender(k: int):
        session = requests.Session()
        for n in range(k, total, senders):
            due = start + n / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            event = purchase_event(n, run=run)
            body = json.dumps(event)
            header = stripe.WebhookSignature.generate_signature_header(body, SECRETS["STRIPE_WEBHOOK_SECRET"])
            posted = time.time()
            r = session.post(f"{url}/webhooks/stripe", data=body, headers={"Stripe-Signature": header,
                                                                            "Content-Type": "application/json"})
            if r.status_code == 200:
                with lock:
                    acked[event["id"]] = time.time()
                    sent[event["id"]] = posted

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return acked


def latencies(db_url: str, acked: dict[str, float], timeout: float = 120) -> list[float]:
    """ms from each event's time in `acked` to the commit of its effects (0 when committed before it)."""
    engine = sa.create_engine(db_url)
    deadline = time.time() + timeout
    ids = list(acked)
    while True:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT event_id, processed_at FROM inbox_event WHERE event_id = ANY(:ids) AND status = 'processed'"),
                {"ids": ids}).all()
        if len(rows) == len(ids) or time.time() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    return [max(0.0, (processed.timestamp() - acked[event_id]) * 1000) for event_id, processed in rows]


def _figures(url: str, acked: dict[str, float], sent: dict[str, float]) -> dict:
    lat, whole = latencies(url, acked), latencies(url, sent)
    return {"n": len(lat), "p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99),
            "sent_p50": percentile(whole, 0.5), "sent_p99": percentile(whole, 0.99)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="10,100,600")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--idle", type=int, default=20, help="single purchases sent one at a time, 0.5 s apart")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)

    url = fresh_database("coursepipe_bench_e2e")
    seed_course(url)
    env = env_for(url, f"bench-{uuid.uuid4().hex[:8]}")
    results = {}
    with gunicorn("ingress.wsgi:app", env, 4) as base, dramatiq_workers(env, args.processes, args.threads):
        time.sleep(2)  # workers boot
        acked, sent = {}, {}
        for n in range(args.idle):
            acked.update(paced_send(base, 1000, 0.001, f"idle{n}", senders=1, sent=sent))
            time.sleep(0.5)
        results["idle"] = _figures(url, acked, sent)
        for rate in [float(r) for r in args.rates.split(",")]:
            sent = {}
            acked = paced_send(base, rate, args.seconds, f"r{int(rate)}_{uuid.uuid4().hex[:4]}", sent=sent)
            results[f"{rate:.0f}/s"] = _figures(url, acked, sent)
    drop_namespace(env["REDIS_NAMESPACE"])
    print(f"{'load':<10}{'events':>8}{'p50 ms':>10}{'p99 ms':>10}{'sent->committed p50':>22}{'p99':>8}")
    for name, r in results.items():
        print(f"{name:<10}{r['n']:>8}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['sent_p50']:>22.1f}{r['sent_p99']:>8.1f}")
    print(f"(p50/p99: acknowledged -> effects committed, the targets' measure; sent -> committed adds the time to the "
          f"acknowledgement; gunicorn 4 workers, dramatiq {args.processes}x{args.threads})")
    return results


if __name__ == "__main__":
    main()
