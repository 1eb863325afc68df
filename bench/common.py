"""Shared set-up for the benchmarks: a fresh PostgreSQL database, env, gunicorn, wrk parsing."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# fixed (the benchmarks sign their events in advance) and strong enough for Settings.require
SECRETS = {"STRIPE_WEBHOOK_SECRET": "whsec_bench_9f3Kq2Lx7Vb4Tz1Nw8Rc5Hd", "PLATFORM_WEBHOOK_SECRET":
           "bench-platform-Q7m2Xv9Lk4Tr8Nz3Wp6Yc", "ADMIN_TOKEN": "bench-admin-Hq3Zr8Lw2Vx7Nc4Tk9Pm"}


def fresh_database(name: str, code: Path | None = None) -> str:
    """A new database migrated to the head of this checkout, or of `code` (another checkout: its own migrations,
    which may be fewer)."""
    from db.migrate import upgrade

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    if code is None or code.resolve() == ROOT:
        upgrade(url)
    else:
        subprocess.run([sys.executable, "-c", "import sys; from db.migrate import upgrade; upgrade(sys.argv[1])", url],
                       cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, check=True)
    return url


def env_for(database_url: str, namespace: str) -> dict:
    env = {**os.environ, **SECRETS, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
           "REDIS_NAMESPACE": namespace, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server(str):
    """A running server's base URL; `pid` is its gunicorn arbiter (the workers are its children)."""

    pid: int


@contextmanager
def gunicorn(app: str, env: dict, workers: int, threads: int = 1, worker_class: str | None = None):
    """`worker_class` None: gunicorn.conf.py's (gthread with WEB_THREADS threads), or gthread with `threads`."""
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{port}",
           "--workers", str(workers), "--log-level", "warning"]
    if threads > 1:
        cmd += ["--worker-class", "gthread", "--threads", str(threads)]
    elif worker_class:
        # gunicorn runs "sync" with more than one thread (gunicorn.conf.py's WEB_THREADS) as gthread
        cmd += ["--worker-class", worker_class, "--threads", "1"]
    proc = subprocess.Popen([*cmd, app], env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # the bare app has no /healthz: a 404 means it is up
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"gunicorn {app} did not start")
                time.sleep(0.1)
        server = Server(f"http://127.0.0.1:{port}")
        server.pid = proc.pid
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if not wrk:
        raise SystemExit("bench needs wrk (Debian package 'wrk'): apt-get install -y wrk")
    return wrk


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, lua_args: list[str], seconds: int, connections: int, threads: int = 2) -> dict:
    wrk = require_wrk()
    out = subprocess.run([wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(ROOT / "bench" / "signed.lua"), url, "--", *lua_args],
                         capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rate": rate, "p50_ms": p50, "p99_ms": p99, "errors": int(non2xx.group(1)) if non2xx else 0}


# --------------------------------------------------------------------------- purchases


def seed_course(url: str, code: str = "BENCH", steps: int = 5) -> None:
    """A published course with `steps` steps (one option each) and a bundle of 2 private credits."""
    from db.database import Database
    from db.enums import BundleKind, ProgramStatus
    from db.models import CourseBundleComponent, CourseProgram, CourseStep, CourseStepOption

    database = Database(url)
    with database.session_scope() as s:
        program = CourseProgram(code=code, title=f"{code} course", timezone="UTC", price_amount=12000,
                                price_currency="usd", status=ProgramStatus.PUBLISHED,
                                stripe_product_id=f"prod_{code}", stripe_price_id=f"price_{code}")
        s.add(program)
        s.flush()
        for position in range(1, steps + 1):
            step = CourseStep(program_id=program.id, position=position, label=f"{code}-{position}")
            s.add(step)
            s.flush()
            s.add(CourseStepOption(program_id=program.id, step_id=step.id, group_class_id=f"gc_{code}_{position}"))
        s.add(CourseBundleComponent(program_id=program.id, kind=BundleKind.PRIVATE_CREDIT, quantity=2))
    database.dispose()


_CHECKOUT_TEMPLATE = None


def purchase_event(n: int, code: str = "BENCH", run: str = "r") -> dict:
    """A paid checkout.session.completed for student bench_<run>_<n>, from the Stripe fixture envelope."""
    import copy

    global _CHECKOUT_TEMPLATE
    if _CHECKOUT_TEMPLATE is None:
        _CHECKOUT_TEMPLATE = json.loads(
            (ROOT / "tests" / "fixtures" / "stripe" / "events" / "checkout.session.completed.json").read_text())
    event = copy.deepcopy(_CHECKOUT_TEMPLATE)
    event["id"] = f"evt_{run}_{n}"
    event["created"] = int(time.time())
    obj = event["data"]["object"]
    obj.update({"id": f"cs_{run}_{n}", "payment_intent": f"pi_{run}_{n}", "payment_status": "paid",
                "status": "complete", "client_reference_id": f"stu_{run}_{n}", "amount_total": 12000,
                "currency": "usd", "metadata": {"kind": "course", "course_code": code}})
    obj["customer_details"] = {**(obj.get("customer_details") or {}), "email": f"stu_{run}_{n}@bench.test"}
    return event


@contextmanager
def dramatiq_workers(env: dict, processes: int, threads: int):
    cmd = [sys.executable, "-m", "dramatiq", "workers.app", "--processes", str(processes), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def tree_cpu_seconds(root_pid: int) -> float:
    """User + system CPU seconds of a process and its children (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += int(stats[pid][11]) + int(stats[pid][12])  # utime, stime
        todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


def pids_cpu_seconds(pids) -> float:
    """User + system CPU seconds of these processes (those that ended count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def postgres_backends(url: str) -> list[int]:
    """The server processes of every connection open to this benchmark's database."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                    " AND pid <> pg_backend_pid()")).scalars().all()
    engine.dispose()
    return list(pids)


class BackendCpu:
    """CPU seconds of the PostgreSQL backends whose connections carry `application_name`, sampled every
    0.1 s from /proc while they live (a backend's last reading counts once it is gone)."""

    def __init__(self, url: str, application_name: str):
        import threading

        self.url, self.name = url, application_name
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        engine = sa.create_engine(self.url)
        with engine.connect() as conn:
            while not self._stop.is_set():
                pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"),
                                    {"n": self.name}).scalars().all()
                for pid in {*pids, *self.seen}:
                    cpu = pids_cpu_seconds([pid])
                    if cpu:
                        self.seen[pid] = cpu
                conn.rollback()
                self._stop.wait(0.1)
        engine.dispose()

    def __enter__(self) -> "BackendCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def with_application_name(url: str, name: str) -> str:
    return sa.make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


def redis_pid() -> int | None:
    import redis

    try:
        return int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])
    except Exception:
        return None


def machine_jiffies() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of the whole machine from /proc/stat: two readings give how busy it was."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields)


def inbox_counts(url: str) -> dict:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, count(*) FROM inbox_event GROUP BY status")).all()
    engine.dispose()
    return {status: n for status, n in rows}


def drop_namespace(namespace: str) -> None:
    """Remove a benchmark's Dramatiq keys from Redis (queues, heartbeats) once it is done."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
