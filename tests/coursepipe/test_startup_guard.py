"""Every command that touches the database refuses one that is not at the migration head: one line naming
`coursepipe db upgrade`, exit 1, no traceback (real subprocesses, SQLite and PostgreSQL); /readyz is 503.
A database that does not answer stops one-shot commands, while the processes start and wait for it."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from db.migrate import downgrade, head_revision, upgrade
from tests.conftest import ADMIN_TOKEN, PG_URL, PLATFORM_SECRET, WEBHOOK_SECRET, need

CLI = [sys.executable, "-m", "coursepipe.cli"]
# a refusal takes a second or two; the bound is for a machine that stalls (a CI run saw 60 s pass), and a
# process that starts instead of refusing runs on past any bound
REFUSED_WITHIN = 120
OLDER = "0007"  # a revision behind the head: what a deploy that skipped `db upgrade` finds
LATER = "0999"  # a revision this release does not have: what a rollback to it finds
UPGRADE = "run `coursepipe db upgrade`"

# every command that reads or writes the database (all but `db upgrade|downgrade`, `doctor` and `simulate`)
COMMANDS = [
    ["serve", "--port", "0"],
    ["ingress", "--port", "0"],
    ["worker"],
    ["scheduler"],
    ["events", "list"],
    ["events", "replay", "1"],
    ["courses", "list"],
    ["courses", "publish", "SFZ"],
    ["courses", "import", "examples/courses.yaml"],
    ["refulfill", "--enrollment", "1"],
    ["jobs", "list"],
    ["jobs", "run", "sweep"],
    ["outbox", "list"],
    ["outbox", "retry", "1"],
    ["outbox", "retry-dead"],
    ["admins", "list"],
    ["admins", "remove", "ann@example.test"],
    ["students", "erase", "stu_1", "--yes"],
]


def _env(database_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
               PLATFORM_WEBHOOK_SECRET=PLATFORM_SECRET, ADMIN_TOKEN=ADMIN_TOKEN)
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        return subprocess.run([*CLI, *args], env=env, cwd=root, capture_output=True, text=True,
                              timeout=REFUSED_WITHIN)
    except subprocess.TimeoutExpired:  # it started (serve, ingress, worker, scheduler would run on)
        pytest.fail(f"`coursepipe {' '.join(args)}` did not refuse the database: "
                    f"still running after {REFUSED_WITHIN} s")


def _assert_refused(args: list[str], proc: subprocess.CompletedProcess, expected: str, run: str = UPGRADE) -> None:
    command = f"`coursepipe {' '.join(args)}`"
    assert proc.returncode == 1, f"{command} exited {proc.returncode}: {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, f"{command}: {proc.stderr[-2000:]}"
    lines = [line for line in proc.stderr.strip().splitlines() if '"logger": "alembic' not in line]
    assert len(lines) == 1 and run in lines[0] and expected in lines[0], (command, lines)


def _assert_every_command_refused(database_url: str, redis_url: str, expected: str, commands=COMMANDS,
                                  run: str = UPGRADE) -> None:
    env = _env(database_url, redis_url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda args: (args, _run(args, env)), commands))
    for args, proc in results:
        _assert_refused(args, proc, expected, run)


def _at_a_later_release(url: str) -> None:
    """The database as a later release would leave it: at a revision this release does not have."""
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": LATER})
    engine.dispose()


def test_every_command_refuses_a_sqlite_database_behind_the_head(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade(url, OLDER)
    _assert_every_command_refused(url, redis_url, f"at migration {OLDER}, not at the head {head_revision()}")


def test_a_database_a_later_release_migrated_is_refused_naming_the_downgrade(tmp_path, redis_url):
    """Deployed back over a database a later release migrated, every command and process refuses it, saying to
    downgrade with that release to this one's head; `db upgrade` and `db downgrade`, which cannot move it (this
    release has no script for its revision), say the same and leave it where it is. Before, the refusal said to
    run `coursepipe db upgrade`, which fails."""
    from db.database import Database
    from db.migrate import current_revision

    url = f"sqlite:///{tmp_path / 'later.db'}"
    _at_a_later_release(url)
    later = f"at migration {LATER}, which this release does not have"
    downgrade_to_head = f"`coursepipe db downgrade {head_revision()}`"
    some = [c for c in COMMANDS if c[0] in ("serve", "worker", "scheduler") or c[:2] == ["events", "list"]]
    _assert_every_command_refused(url, redis_url, later, some, run=downgrade_to_head)
    env = _env(url, redis_url)
    for args in (["db", "upgrade"], ["db", "downgrade", OLDER, "--yes"]):
        _assert_refused(args, _run(args, env), f"the database is at {LATER}, which a later release made",
                        run=downgrade_to_head)
    doctor = _run(["doctor"], env)
    assert doctor.returncode == 1 and f"fail database: {later}" in doctor.stdout, doctor.stdout
    database = Database(url)
    try:
        assert current_revision(database.engine) == LATER
    finally:
        database.dispose()


@pytest.mark.postgres
def test_commands_refuse_an_unmigrated_postgresql_database(redis_url):
    """The same check as on SQLite (every command goes through it): the processes and one command of each module."""
    need("postgres")
    name = f"coursepipe_guard_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        some = [c for c in COMMANDS if c[0] in ("serve", "ingress", "worker", "scheduler")
                or c[:2] in (["events", "list"], ["courses", "list"], ["refulfill", "--enrollment"], ["jobs", "list"],
                             ["admins", "list"])]
        _assert_every_command_refused(url, redis_url, "at migration none (no tables)", some)
        upgrade(url, OLDER)
        proc = _run(["events", "list"], _env(url, redis_url))
        _assert_refused(["events", "list"], proc, f"at migration {OLDER}")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path, redis_url):
    path = tmp_path / "never-migrated.db"
    proc = _run(["serve", "--port", "0"], _env(f"sqlite:///{path}", redis_url))
    _assert_refused(["serve"], proc, f"no database file {path}")
    assert not path.exists()
    # `db upgrade` is the way out, and then the same command lists (nothing)
    upgraded = _run(["db", "upgrade"], _env(f"sqlite:///{path}", redis_url))
    assert upgraded.returncode == 0, upgraded.stderr
    listed = _run(["events", "list"], _env(f"sqlite:///{path}", redis_url))
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr


def test_readyz_is_503_on_a_database_behind_the_head(database, runtime, app):
    from db.migrate import current_revision

    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    downgrade(database.url, OLDER)
    try:
        assert current_revision(database.engine) == OLDER
        anonymous = client.get("/readyz")
        assert anonymous.status_code == 503
        assert anonymous.get_json()["error"] == {"code": "not_ready", "message": "not ready: database unavailable"}
        admin = client.get("/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert admin.status_code == 503 and "run `coursepipe db upgrade`" in admin.get_json()["checks"]["database"]
    finally:
        upgrade(database.url)
    assert client.get("/readyz").status_code == 200


def test_readyz_names_the_downgrade_on_a_database_a_later_release_migrated(database, runtime, app):
    client = app.test_client()
    engine = sa.create_engine(database.url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": LATER})
    try:
        admin = client.get("/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert admin.status_code == 503
        assert admin.get_json()["checks"]["database"] == (
            f"the database is at migration {LATER}, which this release does not have (a later release migrated "
            f"it): run that release, or downgrade with it first (`coursepipe db downgrade {head_revision()}`)")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})
        engine.dispose()
    assert client.get("/readyz").status_code == 200


def test_doctor_and_db_upgrade_still_run_on_an_unmigrated_database(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade(url, OLDER)
    env = _env(url, "")
    doctor = _run(["doctor"], env)
    assert doctor.returncode == 1 and "fail database: at migration 0007" in doctor.stdout
    assert _run(["db", "upgrade"], env).returncode == 0


@pytest.mark.parametrize("entry", [
    [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "ingress.wsgi:app"],
    [sys.executable, "-m", "dramatiq", "workers.app", "--processes", "1", "--threads", "1"],
    [sys.executable, "-m", "dramatiq", "workers", "--processes", "1", "--threads", "1"],
], ids=["gunicorn", "dramatiq", "dramatiq-workers"])
def test_the_entry_modules_refuse_a_database_behind_the_head(tmp_path, redis_url, entry):
    """Run without the CLI (`gunicorn ingress.wsgi:app`, `dramatiq workers[.app]`), the processes still refuse."""
    url = f"sqlite:///{tmp_path / 'behind.db'}"
    upgrade(url, OLDER)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = _env(url, redis_url) | {"PYTHONPATH": root}
    try:
        proc = subprocess.run(entry, env=env, cwd=root, capture_output=True, text=True, timeout=REFUSED_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{entry[2]} started on a database behind the head: still running after {REFUSED_WITHIN} s")
    assert proc.returncode != 0
    assert f"at migration {OLDER}, not at the head" in proc.stderr and "run `coursepipe db upgrade`" in proc.stderr
    # the repository's gunicorn.conf.py applies: no control socket (a thread stopped and restarted around every
    # worker fork, at a path shared by every gunicorn of the user)
    assert "Control socket" not in proc.stderr


def test_the_processes_start_while_the_database_does_not_answer_and_work_once_it_does(pg_database, redis_url,
                                                                                     tmp_path):
    """`coursepipe ingress`, `worker` and `scheduler`, restarted during a database outage, come up and wait
    (one warning line; /readyz 503), and work once the database answers: an event accepted, then processed.
    The outage is a TCP proxy in front of PostgreSQL that refuses connections until healed. The ingress is started
    from another directory than the project's (before, it looked for gunicorn.conf.py in the current one)."""
    import json
    import uuid

    import redis
    import requests
    from sqlalchemy import select

    from db.enums import InboxStatus
    from db.models import InboxEvent
    from tests.chaos.network import Proxy
    from tests.netutil import free_port, wait_until
    from tests.signing import platform_event, platform_headers

    url = sa.make_url(pg_database.url)
    proxy = Proxy("postgres", "127.0.0.1", (url.host or "127.0.0.1", url.port or 5432))
    proxy.cut()
    through = url.set(host="127.0.0.1", port=int(proxy.address.rsplit(":", 1)[1])).render_as_string(False)
    namespace = f"cp-outage-{uuid.uuid4().hex[:8]}"
    env = _env(through, redis_url) | {"REDIS_NAMESPACE": namespace}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    port = free_port()
    commands = {"ingress": ["ingress", "--port", str(port), "--workers", "1"],
                "worker": ["worker", "--processes", "1", "--threads", "2"], "scheduler": ["scheduler"]}
    procs = {name: subprocess.Popen([*CLI, *args], env=env, cwd=tmp_path if name == "ingress" else root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name, args in commands.items()}
    base = f"http://127.0.0.1:{port}"

    def ready() -> int | None:
        for name, proc in procs.items():
            assert proc.poll() is None, f"`coursepipe {name}` exited {proc.returncode}: {proc.stderr.read()[-2000:]}"
        try:
            return requests.get(f"{base}/readyz", timeout=5).status_code
        except requests.RequestException:  # still booting
            return None

    client = redis.Redis.from_url(redis_url)
    try:
        assert wait_until(lambda: ready() == 503, timeout=60)  # up, and not ready: the database is away
        # the worker's consumer is running: Dramatiq's heartbeat for this namespace is written
        assert wait_until(lambda: client.zcard(f"{namespace}:__heartbeats__") > 0 and ready() == 503, timeout=60)
        one_shot = _run(["events", "list"], env)  # a one-shot command does not wait: one line, exit 1
        lines = one_shot.stderr.strip().splitlines()
        assert one_shot.returncode == 1 and len(lines) == 1 and "database unreachable" in lines[0], lines
        proxy.heal()
        assert wait_until(lambda: ready() == 200, timeout=60)
        raw = json.dumps(platform_event("student.upserted", {"student_id": "stu_back", "name": "Ann"})).encode()
        accepted = requests.post(f"{base}/webhooks/platform", data=raw, timeout=10,
                                 headers={**platform_headers(raw), "Content-Type": "application/json"})
        assert accepted.status_code == 200, accepted.text

        def processed() -> bool:
            ready()  # every process still running
            with pg_database.session_scope() as s:
                return s.scalar(select(InboxEvent.status)) == InboxStatus.PROCESSED

        assert wait_until(processed, timeout=60)
    finally:
        for proc in procs.values():
            proc.terminate()
        errors = {name: proc.communicate(timeout=30)[1] for name, proc in procs.items()}
        proxy.close()
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)
    for name in ("ingress", "worker", "scheduler"):
        assert "database unreachable" in errors[name] and "starting anyway, waiting for it" in errors[name], \
            (name, errors[name][-2000:])
        assert "Traceback" not in errors[name].split("starting anyway")[0], (name, errors[name][-2000:])
