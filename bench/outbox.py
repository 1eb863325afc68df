"""Outbox delivery: what each purchase leaves to deliver (`enrollment.created` to the platform, the welcome
mail), drained by `coursepipe worker` to a local platform endpoint and SMTP server; time to empty.

    .venv/bin/python bench/outbox.py [--purchases 3000] [--processes 2] [--threads 8] [--receiver-delay-ms 0]

The purchases are fulfilled first (the fast path, not measured), so the outbox holds exactly what the
pipeline writes. The receivers run in a process of their own (a threaded HTTP server answering 200, and
aiosmtpd accepting every mail); the bench sends the scheduler's relay job every 5 s, as the scheduler does,
and waits until every message is `sent`. It prints messages/s and the worker processes' CPU per message.
`--receiver-delay-ms` makes both receivers take that long to answer each message (a remote mail server, a busy
platform).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import (ROOT, drop_namespace, dramatiq_workers, env_for, free_port, fresh_database,  # noqa: E402
                          seed_course, tree_cpu_seconds)
from bench.fulfil import fulfil_purchases  # noqa: E402

RELAY_EVERY = 5  # seconds, as the scheduler sends it (scheduler/service.py)


def serve(http_port: int, smtp_port: int, delay_ms: int = 0) -> None:
    """The far side: a platform endpoint that answers 200 and an SMTP server that accepts every mail, each after
    `delay_ms`."""
    import asyncio
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from aiosmtpd.controller import Controller

    class Platform(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for a sender that keeps its connection

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay_ms / 1000)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    class Accept:
        async def handle_DATA(self, server, session, envelope):
            await asyncio.sleep(delay_ms / 1000)
            return "250 OK"

    http = ThreadingHTTPServer(("127.0.0.1", http_port), Platform)
    http.daemon_threads = True
    smtp = Controller(Accept(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes our stdin


def extra_attempts(url: str) -> int:
    """Attempts beyond one per message (a failed send, or a lease that ran out before the message was sent)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        extra = conn.execute(sa.text("SELECT coalesce(sum(attempts), 0) - count(*) FROM outbox_message")).scalar_one()
    engine.dispose()
    return int(extra)


def counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM outbox_message GROUP BY status")).all()
    engine.dispose()
    return {status: n for status, n in rows}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--purchases", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--receiver-delay-ms", type=int, default=0)
    parser.add_argument("--serve", nargs=2, type=int, metavar=("HTTP_PORT", "SMTP_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve, delay_ms=args.receiver_delay_ms)
        return {}

    url = fresh_database("coursepipe_bench_outbox")
    seed_course(url)
    fulfil_purchases(url, args.purchases, uuid.uuid4().hex[:6])
    total = sum(counts(url).values())
    http_port, smtp_port = free_port(), free_port()
    env = {**env_for(url, f"bench-{uuid.uuid4().hex[:8]}"),
           "PLATFORM_CALLBACK_URL": f"http://127.0.0.1:{http_port}/coursepipe",
           "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "MAIL_FROM": "courses@bench.test"}
    receivers = subprocess.Popen([sys.executable, str(Path(__file__)), "--serve", str(http_port), str(smtp_port),
                                  "--receiver-delay-ms", str(args.receiver_delay_ms)],
                                 cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert receivers.stdout.readline().strip() == "ready"
    from coursepipe.runtime import init_runtime
    from coursepipe.settings import Settings

    relay = init_runtime(Settings.from_env(env)).actors["relay_outbox"]
    try:
        with dramatiq_workers(env, args.processes, args.threads) as workers:
            started = time.monotonic()
            next_relay = started
            while counts(url).get("sent", 0) < total and time.monotonic() - started < 900:
                if time.monotonic() >= next_relay:
                    relay.send()
                    next_relay += RELAY_EVERY
                time.sleep(0.25)
            elapsed = time.monotonic() - started
            cpu = tree_cpu_seconds(workers.pid)
    finally:
        receivers.stdin.close()
        receivers.wait(timeout=30)
        drop_namespace(env["REDIS_NAMESPACE"])
    final = counts(url)
    sent = final.get("sent", 0)
    delay = f", receivers answering after {args.receiver_delay_ms} ms" if args.receiver_delay_ms else ""
    print(f"outbox of {total} messages ({args.purchases} purchases: enrollment.created + welcome mail{delay}) delivered in "
          f"{elapsed:.1f} s: {sent / elapsed:.0f} messages/s, workers' CPU {cpu / max(sent, 1) * 1000:.2f} ms a message "
          f"(start-up included); outbox {final}, attempts beyond one a message: {extra_attempts(url)}")
    return {"messages": total, "seconds": elapsed, "rate": sent / elapsed, "cpu_ms": cpu / max(sent, 1) * 1000}


if __name__ == "__main__":
    main()
