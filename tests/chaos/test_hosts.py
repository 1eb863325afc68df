"""The production topology across hosts: each host a network namespace on one bridge.

    db        PostgreSQL (its own instance, initdb'd for the run) and Redis, bound to the host's address
    ingress   gunicorn ingress.wsgi:app (2 processes)
    w1, w2    dramatiq workers.app (1 process, 4 threads each)
    s1, s2    coursepipe scheduler (one leads)

The ingress and the workers reach PostgreSQL and Redis through a userspace TCP proxy each (in the test's
namespace), and the workers reach the test's SMTP server and platform receiver through one too: faults
go on those proxies and on the hosts' links. The chaos suite's history is sent in slices, one fault
per slice, while the fault lasts; after healing, the stack must settle within 60 s, and at the end
the chaos suite's accounting holds over everything acknowledged.
"""
from __future__ import annotations

import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from db.database import Database
from db.migrate import upgrade
from db.models import JobRun
from tests.chaos.harness import ROOT, Stack
from tests.chaos.network import Host, Network, Proxy, missing_capability, postgres_bin
from tests.chaos.scenario import (
    RECOVERY_TARGET_S,
    account,
    account_outbound,
    build,
    open_inbox_rows,
    open_rows,
    seed,
)
from tests.conftest import IN_CI, make_settings
from tests.netutil import wait_until
from tests.tasks.messaging.outbox_servers import PlatformReceiver, SmtpSink

SLICE = 6  # students per fault
HOLD_S = 4.0  # how long a fault lasts while its slice is sent
SENDERS = 6
TAKEOVER_TARGET_S = 60
CLIENTS = ("ingress", "w1", "w2")  # the hosts whose PostgreSQL and Redis traffic goes through proxies


class Hosts(Stack):
    """The stack spread over hosts; sends and process control as the chaos harness's `Stack`."""

    def __init__(self, net: Network, tmp: Path, namespace: str) -> None:
        super().__init__(database_url="", tmp=tmp, namespace=namespace)
        self.net = net
        self.proxies: dict[str, Proxy] = {}
        self.pg_dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.net.hosts['ingress'].address}:8000"

    @property
    def db(self) -> Host:
        return self.net.hosts["db"]

    def direct_database_url(self, host: str | None = None) -> str:
        return f"postgresql+psycopg://postgres@{host or self.db.address + ':5432'}/coursepipe"

    def spawn(self, host: Host, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen(host.command(*cmd), env={**os.environ, **(env or {})}, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    # ------------------------------------------------------------------ the database host

    def start_postgres(self) -> None:
        owner = pwd.getpwnam("postgres")
        as_postgres = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups"]
        self.pg_dir = tempfile.mkdtemp(prefix="coursepipe-hosts-pg-")
        os.chown(self.pg_dir, owner.pw_uid, owner.pw_gid)
        data, pg = os.path.join(self.pg_dir, "data"), postgres_bin()
        subprocess.run([*as_postgres, f"{pg}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                        "--no-sync"], cwd=self.pg_dir, check=True, capture_output=True, timeout=120)
        with open(os.path.join(data, "pg_hba.conf"), "a") as hba:  # the hosts' subnet, as any other client
            hba.write(f"host all all {self.net.subnet} trust\n")
        self.spawn(self.db, "postgres", [
            *as_postgres, f"{pg}/postgres", "-D", data, "-c", f"listen_addresses={self.db.address}",
            "-c", "port=5432", "-c", f"unix_socket_directories={self.pg_dir}", "-c", "max_connections=300",
            "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "shared_buffers=32MB",
            # a backend notices a vanished client within a second even while it waits on a lock
            "-c", "client_connection_check_interval=1000"])
        admin = sa.create_engine(f"postgresql+psycopg://postgres@{self.db.address}:5432/postgres",
                                 isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 2})

        def accepting() -> bool:
            try:
                with admin.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return True
            except sa.exc.OperationalError:
                assert self.procs["postgres"].poll() is None, "postgres exited (see postgres.log)"
                return False

        assert wait_until(accepting, timeout=60, interval=0.2), "postgres did not start"
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE coursepipe"))
        admin.dispose()
        upgrade(self.direct_database_url())

    def start_redis_host(self) -> None:
        self.spawn(self.db, "redis", ["redis-server", "--bind", self.db.address, "--port", "6379", "--save", "",
                                      "--appendonly", "no", "--protected-mode", "no"])
        client = redis.Redis(host=self.db.address, port=6379, socket_connect_timeout=1)

        def pings() -> bool:
            try:
                return client.ping()
            except redis.RedisError:
                return False

        assert wait_until(pings, timeout=30, interval=0.1), "redis did not start"

    # ------------------------------------------------------------------ the other hosts

    def start_proxies(self, smtp: SmtpSink, receiver: PlatformReceiver) -> None:
        here = self.net.test_address
        for client in CLIENTS:
            self.proxies[f"{client}-pg"] = Proxy(f"{client}-pg", here, (self.db.address, 5432))
            self.proxies[f"{client}-redis"] = Proxy(f"{client}-redis", here, (self.db.address, 6379))
        self.proxies["smtp"] = Proxy("smtp", here, ("127.0.0.1", smtp.port))
        self.proxies["platform"] = Proxy("platform", here, ("127.0.0.1", receiver.server.server_port))

    def host_env(self, name: str) -> dict:
        env = self.env()
        proxied = name in CLIENTS
        env.update({
            "DATABASE_URL": self.direct_database_url(self.proxies[f"{name}-pg"].address if proxied else None),
            "REDIS_URL": f"redis://{self.proxies[f'{name}-redis'].address if proxied else self.db.address + ':6379'}/0",
            "PGAPPNAME": f"coursepipe-{name}",
            "SMTP_URL": f"smtp://{self.proxies['smtp'].address}",
            "PLATFORM_CALLBACK_URL": f"http://{self.proxies['platform'].address}/coursepipe/events",
            "ADMIN_ALERT_EMAILS": "ops@example.test", "MAIL_FROM": "courses@example.test",
        })
        return env

    def start_app(self) -> None:
        hosts = self.net.hosts
        self.spawn(hosts["ingress"], "ingress", [
            sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--bind",
            f"{hosts['ingress'].address}:8000", "--workers", "2", "--log-level", "warning", "ingress.wsgi:app"],
            self.host_env("ingress"))
        for name in ("w1", "w2"):
            self.spawn(hosts[name], name, [sys.executable, "-m", "dramatiq", "workers.app", "--processes", "1",
                                           "--threads", "4"], self.host_env(name))
        for name in ("s1", "s2"):
            self.spawn(hosts[name], name, [str(Path(sys.executable).with_name("coursepipe")), "scheduler"],
                       self.host_env(name))
        assert wait_until(self._ingress_up, timeout=60, interval=0.2), "ingress did not start"
        assert wait_until(lambda: self.leader() is not None, timeout=60, interval=0.2), "no scheduler leads"

    # ------------------------------------------------------------------ the scheduler's leadership

    def leader(self) -> tuple[str, str] | None:
        """(host, identity) of the scheduler holding the leader key."""
        value = redis.Redis(host=self.db.address, port=6379).get(f"{self.namespace}:scheduler-leader")
        if value is None:
            return None
        identity = value.decode()
        pid = int(identity.split(":")[1])
        host = next((name for name in ("s1", "s2") if self.procs[name].pid == pid), None)
        return (host, identity) if host else None

    def stop_all(self) -> None:
        for name in ("ingress", "w1", "w2", "s1", "s2"):
            self._kill(name, signal.SIGTERM)
        self._kill("postgres", signal.SIGINT)  # fast shutdown: clients disconnected, files closed cleanly
        self._kill("redis", signal.SIGKILL)
        for proxy in self.proxies.values():
            proxy.close()
        if self.pg_dir:
            shutil.rmtree(self.pg_dir, ignore_errors=True)


def capability_or_skip() -> None:
    problem = missing_capability()
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)


def test_the_stack_across_hosts_loses_nothing_and_applies_nothing_twice(tmp_path, request):
    from coursepipe.runtime import init_runtime, reset_runtime
    from workers.actors import send

    capability_or_skip()
    rng = random.Random("hosts")
    net = Network()
    smtp, receiver = SmtpSink(), PlatformReceiver()
    hosts = Hosts(net, tmp_path, namespace=f"hosts-{os.getpid()}")
    database = None
    try:
        net.up()
        for name in ("db", "ingress", "w1", "w2", "s1", "s2"):
            net.add_host(name)
        smtp.start()
        receiver.start()
        hosts.start_postgres()
        hosts.start_redis_host()
        hosts.start_proxies(smtp, receiver)
        database = Database(hosts.direct_database_url())
        step_ids = seed(database)
        hosts.start_app()
        init_runtime(make_settings(hosts.direct_database_url(), redis_url=f"redis://{hosts.db.address}:6379/0",
                                   redis_namespace=hosts.namespace))

        sent: list[tuple[str, dict]] = []
        sent_lock = threading.Lock()

        def post(item) -> None:
            (hosts.post_stripe if item[0] == "stripe" else hosts.post_platform)(item[1], timeout=90)
            with sent_lock:  # acknowledged: from here on it must be accounted for
                sent.append(item)

        def deliver(items) -> None:
            with ThreadPoolExecutor(max_workers=SENDERS) as pool:
                list(pool.map(post, items))

        @contextmanager
        def delivering(items):
            """`items` sent by the platform and Stripe while the block injects and heals a fault."""
            errors: list[BaseException] = []

            def run():
                try:
                    deliver(items)
                except BaseException as exc:  # re-raised in the test's thread
                    errors.append(exc)

            thread = threading.Thread(target=run)
            thread.start()
            try:
                yield
            finally:
                thread.join(timeout=120)
            assert not thread.is_alive(), "the senders never finished"
            if errors:
                raise errors[0]

        def settled() -> bool:
            send("sweep_inbox", 2)  # the scheduler's jobs, run more often than in production
            send("relay_outbox")
            return open_inbox_rows(database) == 0

        def hold() -> None:
            time.sleep(HOLD_S)  # the fault's duration

        clock: dict[str, float] = {}

        def healed() -> None:
            clock["healed"] = time.monotonic()  # recovery is counted from here

        # ------------------------------------------------------------ the faults

        def worker_cut_from_redis(items) -> str:
            proxy = hosts.proxies["w1-redis"]
            with delivering(items):
                reset = proxy.cut()
                hold()
                proxy.heal()
                healed()
            assert reset, "w1 held no Redis connection to cut"
            return f"w1's {reset} Redis connections reset, new ones refused for {HOLD_S:.0f} s"

        def worker_cut_from_postgres_mid_transaction(items) -> str:
            proxy = hosts.proxies["w1-pg"]
            status = None
            with delivering(items):
                for _ in range(5):  # until a cut lands between a transaction's first write and its commit
                    proxy.degrade(latency=0.05)  # each statement a round trip of 100 ms: transactions last
                    xid = writing_transaction(database, "coursepipe-w1")
                    proxy.cut()
                    status = outcome(database, xid)
                    if status == "aborted":
                        break
                    proxy.heal()
                hold()
                proxy.heal()
                healed()
            assert status == "aborted", f"no cut landed inside a transaction (last: {status})"
            return f"w1's connections reset inside transaction {xid} (rolled back), refused for {HOLD_S:.0f} s"

        def latency_and_loss(items) -> str:
            for proxy in hosts.proxies.values():
                proxy.degrade(latency=0.03, loss=0.05)
            with delivering(items):
                hold()
                for proxy in hosts.proxies.values():
                    proxy.heal()
                healed()
            held = sum(p.stats["held"] for p in hosts.proxies.values())
            assert held, "no chunk was held back"
            return f"+30 ms each way on every proxied link, 5 % of chunks held 200-400 ms ({held} held)"

        def worker_partitioned(items) -> str:
            proxy = hosts.proxies["w2-pg"]
            spanned = False
            with delivering(items):
                for _ in range(5):  # until the partition catches a transaction between its first write and commit
                    proxy.degrade(latency=0.05)
                    xid = writing_transaction(database, "coursepipe-w2")
                    net.partition("w2")
                    proxy.heal()
                    # what the proxy still had in flight lands within its latency; then nothing can
                    spanned = not wait_until(lambda: status_of(database, xid) != "in progress", timeout=0.5)
                    if spanned:
                        break
                    net.heal("w2")
                hold()
                assert status_of(database, xid) == "in progress", "a transaction of w2 ended while it was cut off"
                net.heal("w2")
                healed()
            assert spanned, "no partition caught w2 inside a transaction"
            status = outcome(database, xid, timeout=RECOVERY_TARGET_S)
            return (f"w2's link down for {HOLD_S:.0f} s inside transaction {xid} (its locks held meanwhile; "
                    f"{status} after the heal)")

        def ingress_partitioned(items) -> str:
            with delivering(items):
                net.partition("ingress")
                hold()
                net.heal("ingress")
                healed()
            return f"the ingress's link down for {HOLD_S:.0f} s (senders retry)"

        takeover: dict = {}

        def scheduler_leader_isolated(items) -> str:
            old_host, old_identity = hosts.leader()
            with delivering(items):
                net.partition(old_host)
                isolated = time.monotonic()
                with database.session_scope() as s:
                    takeover["at"] = s.scalar(sa.select(sa.func.now()))
                new = wait_until(lambda: (hosts.leader() or (None,))[0] not in (None, old_host),
                                 timeout=TAKEOVER_TARGET_S, interval=0.5)
                assert new, f"no scheduler took over from {old_host} within {TAKEOVER_TARGET_S} s"
                new_host, new_identity = hosts.leader()
                acted = wait_until(lambda: finished_runs(database, new_identity, after=takeover["at"]) > 0,
                                   timeout=TAKEOVER_TARGET_S, interval=0.5)
                assert acted, f"{new_host} leads but none of its jobs ran"
                takeover.update(seconds=time.monotonic() - isolated, old=old_identity, old_host=old_host,
                                new_host=new_host)
                net.heal(old_host)
                healed()
            return (f"{old_host} (leader) isolated; {new_host} took over and its jobs ran "
                    f"{takeover['seconds']:.1f} s later; {old_host} healed")

        faults = [worker_cut_from_redis, worker_cut_from_postgres_mid_transaction, latency_and_loss,
                  worker_partitioned, ingress_partitioned, scheduler_leader_isolated]
        slices = [build(step_ids, range(k * SLICE, (k + 1) * SLICE)) for k in range(len(faults))]
        classes = slices[0].classes
        deliver(classes)
        assert wait_until(settled, timeout=RECOVERY_TARGET_S, interval=0.5), "the class mirrors did not settle"

        # each fault lasts while its slice's purchases and the previous slice's bookings, cancellations,
        # attendance and refunds are sent (the platform books once it was told of the enrollment)
        figures = []
        previous_rest: list = []
        for fault, sc in zip(faults, slices):
            purchases = [item for item in sc.phases[0] if item not in sc.classes]
            items = rng.sample(purchases + previous_rest, len(purchases) + len(previous_rest))
            what = fault(items)
            assert wait_until(settled, timeout=RECOVERY_TARGET_S, interval=0.5), \
                f"{fault.__name__}: not settled {RECOVERY_TARGET_S} s after healing: {open_rows(database)}"
            figures.append((fault.__name__, what, len(items), time.monotonic() - clock.pop("healed")))
            previous_rest = sc.phases[1]
        # the last slice's bookings, then some events again, later: duplicates must change nothing
        deliver(rng.sample(previous_rest, len(previous_rest)))
        deliver(rng.sample(sent, 10))
        assert wait_until(settled, timeout=RECOVERY_TARGET_S, interval=0.5), f"not settled: {open_rows(database)}"

        # ------------------------------------------------------------ the accounting
        expected = {stu: want for sc in slices for stu, want in sc.expected.items()}
        bookings = sum(1 for sc in slices for item in sc.phases[1] if item[1]["type"] == "booking.created")
        statuses = account(database, sent_ids={item[1]["id"] for item in sent}, expected=expected,
                           bookings=bookings)
        outbound = account_outbound(database, receiver=receiver, smtp=smtp, relay=lambda: send("relay_outbox"))
        # the isolated leader stepped down: nothing it claimed since it was cut off
        with database.session_scope() as s:
            claimed = s.scalar(sa.select(sa.func.count()).select_from(JobRun).where(
                JobRun.runner == takeover["old"], JobRun.started_at >= takeover["at"]))
        assert claimed == 0, f"the isolated leader {takeover['old_host']} still ran {claimed} jobs"

        lines = [f"[hosts] {name}: {what}; {events} events; recovered {seconds:.1f} s after healing"
                 for name, what, events, seconds in figures]
        acknowledged = len({item[1]["id"] for item in sent})
        print("\n" + "\n".join(lines) + f"\n[hosts] {acknowledged} events acknowledged, inbox {statuses}, "
              f"outbound {outbound}, lost 0, applied twice 0")
        for name, _, _, seconds in figures:
            request.node.user_properties.append((f"recovery_s:{name}", round(seconds, 1)))
        request.node.user_properties.append(("takeover_s", round(takeover["seconds"], 1)))
        assert all(seconds <= RECOVERY_TARGET_S for *_, seconds in figures)
    finally:
        reset_runtime()
        if database is not None:
            database.dispose()
        hosts.stop_all()
        smtp.stop()
        receiver.stop()
        net.down()


def writing_transaction(database: Database, application: str, timeout: float = 20) -> int:
    """The id of a transaction of `application` that has written and not yet committed."""
    query = sa.text("SELECT backend_xid::text::bigint FROM pg_stat_activity "
                    "WHERE application_name = :app AND backend_xid IS NOT NULL LIMIT 1")
    found: list[int] = []

    def seen() -> bool:
        with database.autocommit() as conn:
            xid = conn.execute(query, {"app": application}).scalar()
        if xid is not None:
            found.append(xid)
        return xid is not None

    assert wait_until(seen, timeout=timeout, interval=0.01), f"{application} wrote nothing within {timeout} s"
    return found[0]


def status_of(database: Database, xid: int) -> str:
    with database.autocommit() as conn:
        return conn.execute(sa.text("SELECT txid_status(:xid)"), {"xid": xid}).scalar()


def outcome(database: Database, xid: int, timeout: float = 20) -> str:
    """committed / aborted, once PostgreSQL has decided."""
    assert wait_until(lambda: status_of(database, xid) != "in progress", timeout=timeout, interval=0.05), \
        f"transaction {xid} still open"
    return status_of(database, xid)


def finished_runs(database: Database, runner: str, *, after) -> int:
    with database.session_scope() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(JobRun).where(
            JobRun.runner == runner, JobRun.started_at >= after, JobRun.finished_at.is_not(None)))
