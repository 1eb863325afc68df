"""Test fixtures on real services.

Every test that takes `database` runs twice: on SQLite and on PostgreSQL (a database created for
this run and dropped after). Redis is the real server at TEST_REDIS_URL, in a namespace of its own.
With CI=true an unreachable PostgreSQL or Redis fails the run with one line; elsewhere those
tests skip, saying why.
"""
from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from coursepipe.settings import Settings
from db.database import Database
from db.migrate import upgrade
from db.models import Base

PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

WEBHOOK_SECRET = "whsec_test_" + "a" * 24
PLATFORM_SECRET = "platform_test_secret_0123456789"
ADMIN_TOKEN = "admin-test-token-0123456789"


def _probe_postgres() -> str | None:
    try:
        engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL unreachable at {PG_URL}: {str(exc).splitlines()[0]}"


def _probe_redis() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
        return None
    except Exception as exc:
        return f"Redis unreachable at {REDIS_URL}: {exc}"


_SERVICE_PROBLEMS: dict[str, str | None] = {}


def pytest_sessionstart(session):
    _SERVICE_PROBLEMS["postgres"] = _probe_postgres()
    _SERVICE_PROBLEMS["redis"] = _probe_redis()
    problems = [p for p in _SERVICE_PROBLEMS.values() if p]
    if IN_CI and problems:
        pytest.exit("CI=true and a required service is down: " + "; ".join(problems), returncode=3)


def need(service: str) -> None:
    problem = _SERVICE_PROBLEMS.get(service)
    if problem:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)


# --------------------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def pg_url():
    need("postgres")
    name = f"coursepipe_t_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory):
    path = tmp_path_factory.mktemp("sqlite") / "coursepipe.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


def _truncate(database: Database) -> None:
    """Empty every table and restart every id at 1, between tests.

    DELETE, children first, then every sequence reset in one statement: a test leaves a few rows, and on
    PostgreSQL that is ~20 times cheaper than TRUNCATE (which rewrites each table's files). Tests whose
    workers, subprocesses and ingress commit for real cannot run inside one rolled-back transaction.
    """
    tables = [t.name for t in Base.metadata.sorted_tables]
    with database.engine.begin() as conn:
        for name in reversed(tables):
            conn.execute(sa.text(f"DELETE FROM {name}"))
        if database.dialect == "postgresql":
            conn.execute(sa.text("SELECT setval(seqrelid::regclass, 1, false) FROM pg_sequence"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_backend(request):
    return request.param


@pytest.fixture
def database(db_backend, request):
    url = request.getfixturevalue("pg_url" if db_backend == "postgres" else "sqlite_url")
    database = Database(url)
    _truncate(database)
    yield database
    database.dispose()


@pytest.fixture
def pg_database(pg_url):
    """PostgreSQL only (for tests of PostgreSQL-specific behaviour: SKIP LOCKED, advisory locks)."""
    database = Database(pg_url)
    _truncate(database)
    yield database
    database.dispose()


@pytest.fixture
def session(database):
    with database.session_scope() as s:
        yield s


# --------------------------------------------------------------------------- redis


@pytest.fixture
def redis_url():
    need("redis")
    return REDIS_URL


@pytest.fixture
def redis_namespace(redis_url):
    import redis

    namespace = f"coursepipe-test-{uuid.uuid4().hex[:10]}"
    yield namespace
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)


# --------------------------------------------------------------------------- runtime and app


def make_settings(database_url: str, **overrides) -> Settings:
    values = dict(
        database_url=database_url,
        stripe_webhook_secret=WEBHOOK_SECRET,
        platform_webhook_secret=PLATFORM_SECRET,
        admin_token=ADMIN_TOKEN,
        admin_alert_emails=("ops@example.test",),
        mail_from="courses@example.test",
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database):
    return make_settings(database.url)


@pytest.fixture
def runtime(settings, database):
    """The embedded runtime: the test database and an in-process (stub) broker."""
    from coursepipe.runtime import init_runtime, reset_runtime

    from dramatiq.middleware import Retries

    from tests.inbox_api import HANDLERS

    rt = init_runtime(settings, db=database, handlers=HANDLERS)
    for middleware in rt.broker.middleware:  # fast retries in tests
        if isinstance(middleware, Retries):
            middleware.min_backoff, middleware.max_backoff = 20, 200
    yield rt
    rt.broker.flush_all()
    reset_runtime()


@pytest.fixture
def worker(runtime):
    import dramatiq

    worker = dramatiq.Worker(runtime.broker, worker_timeout=50, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def lock_waited_or_done(database, future) -> bool:
    """PostgreSQL: some session of the test database waits on a lock, or `future` has ended (it did not wait):
    what a test holding a transaction open polls for before it lets the transaction go."""
    with database.engine.connect() as conn:
        waiting = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                       "AND datname = current_database()")).scalar()
    return waiting > 0 or future.done()


def while_held(database, hold, waiter, *, held, release, timeout: float = 30):
    """Run `hold` (it sets `held` once it holds its locks, then waits for `release` before it commits) and,
    once it holds them, `waiter`; let the holder go once the waiter waits on a lock, or has ended without
    waiting. Returns the holder's result, the waiter's future (its result, or what it raised) and whether the
    waiter was still waiting when the holder was let go."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.netutil import wait_until

    with ThreadPoolExecutor(2) as pool:
        holding = pool.submit(hold)
        assert held.wait(timeout), "the holder never held its locks"
        waiting = pool.submit(waiter)
        assert wait_until(lambda: lock_waited_or_done(database, waiting), timeout=timeout)
        waited = not waiting.done()
        release.set()
        result = holding.result(timeout=timeout)
        waiting.exception(timeout=timeout)  # ended, one way or the other
    return result, waiting, waited


def drain(runtime, *queues: str, timeout_ms: int = 20_000) -> None:
    """Wait until the stub broker's queues are empty and every message has been handled."""
    queues = queues or tuple(q for q in runtime.broker.queues if not q.endswith(".DQ"))
    for _ in range(3):  # a handled message may enqueue more (woken events)
        for queue in queues:
            if queue in runtime.broker.queues:
                runtime.broker.join(queue, timeout=timeout_ms, fail_fast=False)


# the routes whose JSON answers are checked: the platform's, the admin API's and the health checks; the
# dashboard's pages (`/admin/ui/…`) answer HTML for a browser and are left out
CHECKED_PREFIXES = ("/v1/", "/webhooks/", "/admin/")
CHECKED_PATHS = ("/healthz", "/readyz")
UNCHECKED_PREFIXES = ("/admin/ui/",)


def contract_checked(app):
    """Check every JSON answer of the platform-facing routes (`/v1/…`, `/webhooks/…`), of the admin API
    (`/admin/…` but the dashboard's pages, `/admin/ui/…`) and of `/healthz` and `/readyz` against the app's
    OpenAPI document while the test runs; `assert_contract_kept(app)` fails the test on any mismatch."""
    from flask import request

    from tests.contract import response_errors

    app.config["TESTING"] = True
    app.config["CONTRACT_ERRORS"] = errors = []

    @app.after_request
    def _conforms(response):
        path = request.path
        checked = (path.startswith(CHECKED_PREFIXES) or path in CHECKED_PATHS) and not path.startswith(
            UNCHECKED_PREFIXES)
        if checked and response.is_json:
            errors.extend(response_errors(app, request.method, request.path, response.status_code,
                                          response.get_json(silent=True)))
        return response

    return app


def assert_contract_kept(app) -> None:
    errors = app.config.get("CONTRACT_ERRORS") or []
    assert not errors, "answers that do not match /openapi.json:\n" + "\n".join(errors[:20])


@pytest.fixture
def app(runtime):
    from ingress.app import create_app

    app = contract_checked(create_app(runtime.settings, runtime=runtime))
    yield app
    assert_contract_kept(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin_headers():
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# real Stripe event envelopes and API objects, not written by us (MIT; see the LICENSE files there)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe"

# the local Stripe API (real HTTP) for the real `stripe` client: fixture `stripe_server`
from tests.stripe_server import stripe_server  # noqa: E402,F401
