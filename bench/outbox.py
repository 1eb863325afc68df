"""Outbox delivery: what each purchase leaves to deliver (`enrollment.created` to the platform, the welcome
mail), drained by `coursepipe worker` to a local platform endpoint and SMTP server; time to empty.

    .venv/bin/python bench/outbox.py [--purchases 3000] [--processes 2] [--threads 8] [--receiver-delay-ms 0]
                                     [--mail-delay-ms N] [--mail-backlog N]

The purchases are fulfilled first (the fast path, not measured), so the outbox holds exactly what the
pipeline writes. The receivers run in a process of their own (a threaded HTTP server answering 200, and
aiosmtpd accepting every mail); the bench sends the scheduler's relay job every 5 s, as the scheduler does,
and waits until every message is `sent`. It prints messages/s and the worker processes' CPU per message.
`--receiver-delay-ms` makes both receivers take that long to answer each message (a remote mail server, a busy
platform); `--mail-delay-ms` the mail server alone. `--mail-backlog N` puts N older mails (a reminder run, say)
ahead of the purchases' messages. It also prints when each channel's last message was sent.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from bench.common import (ROOT, drop_namespace, dramatiq_workers, env_for, free_port, fresh_database,  # noqa: E402
                          seed_course, tree_cpu_seconds)
from bench.fulfil import fulfil_purchases  # noqa: E402

RELAY_EVERY = 5  # seconds, as the scheduler sends it (scheduler/service.py)


def serve(http_port: int, smtp_port: int, delay_ms: int = 0, mail_delay_ms: int | None = None) -> None:
    """The far side: a platform endpoint that answers 200 and an SMTP server that accepts every mail, each after
    `delay_ms` (the mail server after `mail_delay_ms`, if given)."""
    mail_delay_ms = delay_ms if mail_delay_ms is None else mail_delay_ms
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
            await asyncio.sleep(mail_delay_ms / 1000)
            return "250 OK"

    http = ThreadingHTTPServer(("127.0.0.1", http_port), Platform)
    http.daemon_threads = True
    smtp = Controller(Accept(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the bench closes our stdin


def add_mail_backlog(url: str, count: int) -> None:
    """`count` reminder mails written a minute before the purchases' messages (due before them)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts,"
            " created_at, next_attempt_at)"
            " SELECT md5('backlog' || g), 'backlog:' || g, 'mail', 'step_reminder', 'r' || g || '@bench.test',"
            " '{\"template\": \"step_reminder\", \"context\": {\"step_label\": \"B-1\"}}'::jsonb, 'pending', 0,"
            " now() - interval '1 minute', now() - interval '1 minute' FROM generate_series(1, :n) AS g"), {"n": count})
    engine.dispose()


def extra_attempts(url: str) -> int:
    """Attempts beyond one per message (a failed send, or a lease that ran out before the message was sent)."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        extra = conn.execute(sa.text("SELECT coalesce(sum(attempts), 0) - count(*) FROM outbox_message")).scalar_one()
    engine.dispose()
    return int(extra)


def last_sent(url: str, since: datetime) -> dict[str, float]:
    """Seconds from `since` to each channel's last `sent_at`."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT channel, max(sent_at) FROM outbox_message GROUP BY channel")).all()
    engine.dispose()
    return {channel: (last - since).total_seconds() for channel, last in rows if last is not None}


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
    parser.add_argument("--mail-delay-ms", type=int, default=None)
    parser.add_argument("--mail-backlog", type=int, default=0)
    parser.add_argument("--serve", nargs=2, type=int, metavar=("HTTP_PORT", "SMTP_PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve, delay_ms=args.receiver_delay_ms, mail_delay_ms=args.mail_delay_ms)
        return {}

    url = fresh_database("coursepipe_bench_outbox")
    seed_course(url)
    fulfil_purchases(url, args.purchases, uuid.uuid4().hex[:6])
    if args.mail_backlog:
        add_mail_backlog(url, args.mail_backlog)
    total = sum(counts(url).values())
    http_port, smtp_port = free_port(), free_port()
    env = {**env_for(url, f"bench-{uuid.uuid4().hex[:8]}"),
           "PLATFORM_CALLBACK_URL": f"http://127.0.0.1:{http_port}/coursepipe",
           "SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "MAIL_FROM": "courses@bench.test"}
    receivers = subprocess.Popen([sys.executable, str(Path(__file__)), "--serve", str(http_port), str(smtp_port),
                                  "--receiver-delay-ms", str(args.receiver_delay_ms)]
                                 + (["--mail-delay-ms", str(args.mail_delay_ms)] if args.mail_delay_ms is not None else []),
                                 cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert receivers.stdout.readline().strip() == "ready"
    from coursepipe.runtime import init_runtime
    from coursepipe.settings import Settings

    relay = init_runtime(Settings.from_env(env)).actors["relay_outbox"]
    try:
        with dramatiq_workers(env, args.processes, args.threads) as workers:
            started = time.monotonic()
            started_at = datetime.now(timezone.utc)
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
    if args.mail_backlog:
        delay += f", behind {args.mail_backlog} older mails"
    if args.mail_delay_ms is not None:
        delay += f", the mail server after {args.mail_delay_ms} ms"
    finished = ", ".join(f"{channel} {seconds:.1f} s" for channel, seconds in sorted(last_sent(url, started_at).items()))
    print(f"outbox of {total} messages ({args.purchases} purchases: enrollment.created + welcome mail{delay}) delivered in "
          f"{elapsed:.1f} s: {sent / elapsed:.0f} messages/s, workers' CPU {cpu / max(sent, 1) * 1000:.2f} ms a message "
          f"(start-up included); outbox {final}, attempts beyond one a message: {extra_attempts(url)}; last sent: {finished}")
    return {"messages": total, "seconds": elapsed, "rate": sent / elapsed, "cpu_ms": cpu / max(sent, 1) * 1000}


if __name__ == "__main__":
    main()
