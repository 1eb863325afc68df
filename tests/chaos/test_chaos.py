"""Fault injection over the real stack: gunicorn ingress, Dramatiq worker processes, Redis, PostgreSQL,
a real SMTP server and a signature-checking platform receiver.

A stream of purchases, bookings, cancellations, attendance and refunds is sent (shuffled within its
phase, some events twice) while one fault is injected. Then the stack settles and every accepted
event is accounted for like a queue checker: none lost, none applied twice, nothing unexpected,
every inbox row processed/ignored, every outbox row delivered, balances equal to what the history
implies. Recovery time after the fault is measured (target: 60 s).
"""
from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.chaos.harness import Stack, wait_until
from tests.chaos.scenario import (
    RECOVERY_TARGET_S,
    account,
    account_outbound,
    build,
    open_inbox_rows,
    open_rows,
    seed,
)
from tests.conftest import make_settings
from tests.tasks.messaging.outbox_servers import PlatformReceiver, SmtpSink


# --------------------------------------------------------------------------- the faults


def worker_sigkill(stack: Stack, ctx) -> None:
    for _ in range(3):  # mid-transaction or after commit before ack: whichever the kill lands on
        stack.kill_worker()
        time.sleep(0.3)
        stack.start_worker()
        time.sleep(0.7)


def ingress_sigkill(stack: Stack, ctx) -> None:
    for pid in stack.ingress_worker_pids()[:1]:
        import os
        import signal

        os.kill(pid, signal.SIGKILL)  # gunicorn's master starts a new worker


def redis_restart(stack: Stack, ctx) -> None:
    stack.stop_redis()
    time.sleep(1.0)
    stack.start_redis()  # empty: every queued message is gone


def redis_flushall(stack: Stack, ctx) -> None:
    stack.flushall()


def pg_terminate(stack: Stack, ctx) -> None:
    stack.terminate_backends()
    time.sleep(0.3)
    stack.terminate_backends()


def receivers_down(stack: Stack, ctx) -> None:
    ctx["smtp"].stop()
    ctx["platform_down"].set()
    time.sleep(2.0)
    ctx["smtp"].start()
    ctx["platform_down"].clear()


FAULTS = {
    "worker_sigkill": worker_sigkill,
    "ingress_sigkill": ingress_sigkill,
    "redis_restart": redis_restart,
    "redis_flushall": redis_flushall,
    "pg_terminate": pg_terminate,
    "smtp_and_platform_down": receivers_down,
    "duplicate_storm": None,  # every event of the second phase delivered 4 times at once
    "shuffled": None,  # the second phase fully shuffled (cancels before bookings, refunds first)
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_accepted_event_is_accounted_for(fault, pg_database, redis_url, tmp_path, request):
    from coursepipe.runtime import init_runtime, reset_runtime
    from workers.actors import send

    rng = random.Random(f"chaos-{fault}")
    step_ids = seed(pg_database)
    scenario = build(step_ids)
    smtp, receiver = SmtpSink(), PlatformReceiver()
    smtp.start()
    receiver.start()
    platform_down = threading.Event()
    original_do_post = receiver.server.RequestHandlerClass.do_POST

    def do_post(handler):  # "down": refuse with 503 while the fault lasts
        if platform_down.is_set():
            handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
            return handler._answer(503)
        return original_do_post(handler)

    receiver.server.RequestHandlerClass.do_POST = do_post
    stack = Stack(database_url=pg_database.url, tmp=tmp_path, namespace=f"chaos-{uuid.uuid4().hex[:8]}",
                  extra_env={"SMTP_URL": smtp.url, "PLATFORM_CALLBACK_URL": receiver.url,
                             "ADMIN_ALERT_EMAILS": "ops@example.test", "MAIL_FROM": "courses@example.test"})
    ctx = {"smtp": smtp, "platform_down": platform_down}
    try:
        stack.start_redis()
        stack.start_ingress(workers=2)
        stack.start_worker(processes=1, threads=4)
        init_runtime(make_settings(pg_database.url, redis_url=stack.redis_url, redis_namespace=stack.namespace))

        def deliver(phase, *, copies=1):
            jobs = [item for item in phase for _ in range(copies)]
            with ThreadPoolExecutor(max_workers=6) as pool:
                list(pool.map(lambda item: (stack.post_stripe if item[0] == "stripe" else stack.post_platform)(
                    item[1]), jobs))

        def settled() -> bool:
            send("sweep_inbox", 2)  # the scheduler's jobs, run more often than in production
            send("relay_outbox")
            return open_inbox_rows(pg_database) == 0

        fault_fn = FAULTS[fault]
        first, second = scenario.phases
        rng.shuffle(first)
        # phase 1: catalog mirror and purchases, the fault in the middle of them
        half = len(first) // 2
        deliver(first[:half])
        fault_thread = threading.Thread(target=fault_fn, args=(stack, ctx)) if fault_fn else None
        if fault_thread:
            fault_thread.start()
        deliver(first[half:])
        if fault_thread:
            fault_thread.join()
        fault_end = time.monotonic()
        # the platform lets a student book once it was told of the enrollment: phase 1 takes effect first
        assert wait_until(settled, timeout=RECOVERY_TARGET_S, interval=1.0), "purchases did not take effect"
        recovery = time.monotonic() - fault_end

        # phase 2: bookings, cancellations, attendance, refunds — shuffled within kind, or all at once
        if fault == "shuffled":
            rng.shuffle(second)
        else:
            # ordered by kind as the real world mostly sends them, each kind shuffled
            by_kind: dict[str, list] = {}
            for item in second:
                by_kind.setdefault(item[1]["type"], []).append(item)
            second = [it for kind in by_kind.values() for it in rng.sample(kind, len(kind))]
        deliver(second, copies=4 if fault == "duplicate_storm" else 1)
        # some events again, later: duplicates must change nothing
        deliver(rng.sample(first, 5) + rng.sample(second, 5))
        assert wait_until(settled, timeout=RECOVERY_TARGET_S, interval=1.0), \
            f"stream did not settle: {open_rows(pg_database)}"

        # ---------------------------------------------------------------- the accounting
        sent_ids = {item[1]["id"] for phase in scenario.phases for item in phase}
        expected_bookings = sum(1 for item in second if item[1]["type"] == "booking.created")
        statuses = account(pg_database, sent_ids=sent_ids, expected=scenario.expected, bookings=expected_bookings)
        # every outbox row delivered (the receivers are up again), each platform event id and mail received
        outbound = account_outbound(pg_database, receiver=receiver, smtp=smtp, relay=lambda: send("relay_outbox"))
        platform_rows, mail_rows = outbound["platform"], outbound["mail"]
        request.node.user_properties.append(("recovery_s", round(recovery, 1)))
        print(f"\n[chaos] {fault}: recovered in {recovery:.1f} s; inbox {statuses}; "
              f"outbox platform {platform_rows}, mail {mail_rows}")
        assert recovery <= RECOVERY_TARGET_S
    finally:
        reset_runtime()
        stack.stop()
        smtp.stop()
        receiver.stop()
