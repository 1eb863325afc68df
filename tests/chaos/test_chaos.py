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
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from db.enums import BundleKind, InboxStatus, OutboxStatus, ProgramStatus
from db.models import (
    Booking,
    CourseBundleComponent,
    CourseProgram,
    CourseStep,
    CourseStepOption,
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from tasks.ledger import credits
from tests.chaos.harness import Stack, wait_until
from tests.conftest import make_settings
from tests.tasks.messaging.outbox_servers import PlatformReceiver, SmtpSink
from tests.tasks.purchases.payments_support import charge_refunded, checkout

STUDENTS = 24
STEPS = 3
PRICE = 12000
RECOVERY_TARGET_S = 60
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def envelope(type_: str, data: dict, occurred_at: datetime) -> dict:
    return {"id": f"pev_{uuid.uuid4().hex[:16]}", "type": type_, "occurred_at": occurred_at.isoformat(),
            "data": data}


@dataclass
class Scenario:
    step_ids: list[int]
    phases: list[list[tuple[str, dict]]] = field(default_factory=list)  # (source, event)
    expected: dict = field(default_factory=dict)


def seed(database) -> list[int]:
    with database.session_scope() as s:
        program = CourseProgram(code="CHAOS", title="Chaos course", timezone="UTC", price_amount=PRICE,
                                price_currency="usd", status=ProgramStatus.PUBLISHED)
        s.add(program)
        s.flush()
        ids = []
        for position in range(1, STEPS + 1):
            step = CourseStep(program_id=program.id, position=position, label=f"CHAOS-{position}")
            s.add(step)
            s.flush()
            s.add(CourseStepOption(program_id=program.id, step_id=step.id, group_class_id=f"gc_chaos_{position}"))
            ids.append(step.id)
        s.add(CourseBundleComponent(program_id=program.id, kind=BundleKind.PRIVATE_CREDIT, quantity=2))
        s.add(CourseBundleComponent(program_id=program.id, kind=BundleKind.GROUP_CREDIT, quantity=1))
    return ids


def build(step_ids: list[int]) -> Scenario:
    """The history, and the state it implies (see the per-student rules inline)."""
    sc = Scenario(step_ids)
    classes = [("platform", envelope("class.upserted", {
        "class_id": f"gc_chaos_{p}", "title": f"Chaos {p}", "starts_at": (NOW + timedelta(days=3 + p)).isoformat(),
        "ends_at": (NOW + timedelta(days=3 + p, hours=1)).isoformat(), "capacity": 100, "seats_taken": 10,
        "status": "scheduled"}, NOW)) for p in range(1, STEPS + 1)]
    purchases, bookings, outcomes, refunds = [], [], [], []
    for i in range(STUDENTS):
        stu, pi = f"stu_chaos_{i}", f"pi_chaos_{i}"
        purchases.append(("stripe", checkout(cs=f"cs_chaos_{i}", pi=pi, student=stu, course="CHAOS", amount=PRICE,
                                             email=f"{stu}@example.test")))
        book = lambda bk, step, when: ("platform", envelope("booking.created", {  # noqa: E731
            "booking_id": bk, "student_id": stu, "class_id": f"gc_chaos_{step}",
            "course_step_id": step_ids[step - 1]}, when))
        bookings.append(book(f"bk_{i}_1", 1, NOW + timedelta(minutes=1)))
        steps = ["booked", "unbooked", "unbooked"]
        private = 2
        if i % 3 == 0:  # books step 2 as well (different steps at once)
            bookings.append(book(f"bk_{i}_2", 2, NOW + timedelta(minutes=2)))
            steps[1] = "booked"
        if i % 4 == 0:  # a private session paid with a bundled credit
            bookings.append(("platform", envelope("booking.created", {
                "booking_id": f"bk_{i}_p", "student_id": stu, "class_id": "private_1", "credit_type": "private"},
                NOW + timedelta(minutes=3))))
            private -= 1
            if i % 8 == 0:  # ... cancelled within policy: the credit comes back
                outcomes.append(("platform", envelope("booking.cancelled", {
                    "booking_id": f"bk_{i}_p", "cancelled_at": (NOW + timedelta(minutes=9)).isoformat(),
                    "within_policy": True}, NOW + timedelta(minutes=9))))
                private += 1
        if i % 3 == 1:  # cancels step 1 within policy: back to unbooked
            outcomes.append(("platform", envelope("booking.cancelled", {
                "booking_id": f"bk_{i}_1", "cancelled_at": (NOW + timedelta(minutes=10)).isoformat(),
                "within_policy": True}, NOW + timedelta(minutes=10))))
            steps[0] = "unbooked"
        elif i % 3 == 2:  # attends step 1
            outcomes.append(("platform", envelope("attendance.marked", {
                "booking_id": f"bk_{i}_1", "outcome": "attended", "marked_at": (NOW + timedelta(days=4)).isoformat()},
                NOW + timedelta(days=4))))
            steps[0] = "completed"
        status = "active"
        # full refund: revoked, open steps cancelled, unconsumed credits gone. Only for students whose
        # step outcome does not depend on whether the refund overtakes their booking (a booking after
        # the refund is refused: the step ends cancelled either way), so any delivery order must end here
        if i % 6 == 0:
            refunds.append(("stripe", charge_refunded(pi=pi, amount=PRICE, refunded=PRICE,
                                                      refunds=((f"re_chaos_{i}", PRICE),), charge=f"ch_chaos_{i}")))
            status = "revoked"
            steps = ["completed" if st == "completed" else "cancelled" for st in steps]
            private = 0
        sc.expected[stu] = {"status": status, "steps": steps,
                            "balances": {"private": private, "group": 0 if status == "revoked" else 1}}
    sc.phases = [classes + purchases, bookings + outcomes + refunds]
    return sc


def actual(database, student_id: str) -> dict:
    with database.session_scope() as s:
        enrollment = s.scalar(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == student_id))
        steps = s.execute(select(StudentCourseProgress.status).join(CourseStep)
                          .where(StudentCourseProgress.enrollment_id == enrollment.id)
                          .order_by(CourseStep.position)).scalars().all()
        return {"status": enrollment.status.value, "steps": [st.value for st in steps],
                "balances": credits.balances(session=s, student_id=student_id)}


def count(database, model, *where) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


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

        def settled(kinds=None) -> bool:
            send("sweep_inbox", 2)  # the scheduler's jobs, run more often than in production
            send("relay_outbox")
            with pg_database.session_scope() as s:
                open_rows = s.scalar(select(func.count()).select_from(InboxEvent).where(
                    InboxEvent.status.in_([InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING])))
            return open_rows == 0

        def open_rows():
            with pg_database.session_scope() as s:
                return [(e.type, e.status.value, e.waiting_for, e.last_error, e.payload.get("data", {}).get("booking_id"))
                        for e in s.scalars(select(InboxEvent).where(InboxEvent.status.in_(
                            [InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING])))]

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
        assert wait_until(settled, timeout=RECOVERY_TARGET_S, interval=1.0), f"stream did not settle: {open_rows()}"

        # ---------------------------------------------------------------- the accounting
        with pg_database.session_scope() as s:
            statuses = dict(s.execute(select(InboxEvent.status, func.count()).group_by(InboxEvent.status)).all())
        sent_ids = {item[1]["id"] for phase in scenario.phases for item in phase}
        assert count(pg_database, InboxEvent) == len(sent_ids), "lost or extra inbox rows"
        with pg_database.session_scope() as s:
            failures = [(e.type, e.event_id, e.last_error) for e in s.scalars(
                select(InboxEvent).where(InboxEvent.status.not_in([InboxStatus.PROCESSED, InboxStatus.IGNORED])))]
        assert not failures, f"unexpected inbox statuses {statuses}: {failures}"
        assert count(pg_database, StudentCourseEnrollment) == STUDENTS  # one per purchase, none twice
        assert count(pg_database, StudentCourseProgress) == STUDENTS * STEPS
        assert count(pg_database, CreditLedgerEntry, CreditLedgerEntry.entry_type == "grant") == STUDENTS * 2
        expected_bookings = sum(1 for item in second if item[1]["type"] == "booking.created")
        assert count(pg_database, Booking) == expected_bookings
        mismatches = {stu: (actual(pg_database, stu), want) for stu, want in scenario.expected.items()
                      if actual(pg_database, stu) != want}
        assert not mismatches, f"state differs from the history: {mismatches}"

        # every outbox row delivered (the receivers are up again), each platform event id exactly once
        def outbox_drained() -> bool:
            send("relay_outbox")
            return count(pg_database, OutboxMessage, OutboxMessage.status != OutboxStatus.SENT) == 0

        assert wait_until(outbox_drained, timeout=RECOVERY_TARGET_S, interval=1.0), "outbox did not drain"
        platform_rows = count(pg_database, OutboxMessage, OutboxMessage.channel == "platform")
        received_ids = [event["id"] for event in receiver.events]
        assert len(set(received_ids)) == platform_rows and not receiver.rejected
        mail_rows = count(pg_database, OutboxMessage, OutboxMessage.channel == "mail")
        assert len({m["Message-ID"] for m in smtp.messages}) == mail_rows
        request.node.user_properties.append(("recovery_s", round(recovery, 1)))
        print(f"\n[chaos] {fault}: recovered in {recovery:.1f} s; inbox {statuses}; "
              f"outbox platform {platform_rows}, mail {mail_rows}")
        assert recovery <= RECOVERY_TARGET_S
    finally:
        reset_runtime()
        stack.stop()
        smtp.stop()
        receiver.stop()
