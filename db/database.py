"""Engine and unit-of-work set-up. Nothing is created at import time."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine) -> None:
    """SQLite: WAL, foreign keys on, and BEGIN IMMEDIATE so writers queue instead of deadlocking."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # let SQLAlchemy emit BEGIN itself (pysqlite's implicit transactions are off)
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _create_private_file(url: str) -> None:
    """A new SQLite file is created readable by its owner only (0600); SQLite gives its -wal/-shm the same mode."""
    from sqlalchemy.engine import make_url

    path = make_url(url).database
    if path and path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def make_engine(url: str, **kwargs) -> Engine:
    # a failed statement's message (logged, stored as an event's last_error) names no bound value: no e-mail,
    # name or payload reaches a log through "[parameters: …]"
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        _create_private_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    # No pre-ping: it costs a round trip per checkout on the hot path. A connection broken by a
    # failover fails its statement once and is discarded (the sender / Dramatiq retries).
    kwargs.setdefault("pool_pre_ping", False)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


class Database:
    """One engine and its session factory; the caller owns each unit of work."""

    def __init__(self, url: str, **engine_kwargs) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._direct_lock = threading.Lock()
        self._direct_idle: list[Any] = []
        self._direct_generation = 0  # dispose() starts a new one: connections in use then are closed on return

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on any error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def autocommit(self) -> Iterator:
        """A connection where each statement commits on its own: for single-statement units of work."""
        with self.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")

    @contextmanager
    def direct_autocommit(self) -> Iterator[Any]:
        """For one-statement units of work on a hot path (the ingress insert).

        On PostgreSQL: a psycopg connection in autocommit mode from a small free list of kept-open
        connections — no SQLAlchemy pool checkout, reset on return or statement handling (their
        cost is in docs/performance.md). It holds as many connections as calls ever ran at once (one per gunicorn
        worker thread), whatever the threads are. A connection that broke (failover, terminated
        backend) fails its statement once, as a pooled one does, and is dropped. On SQLite:
        `autocommit()`.
        """
        if self.dialect != "postgresql":
            with self.autocommit() as conn:
                yield conn
            return
        with self._direct_lock:
            generation = self._direct_generation
            conn = self._direct_idle.pop() if self._direct_idle else None
        if conn is None or conn.closed or conn.broken:
            fairy = self.engine.raw_connection()  # the dialect's own connect arguments and set-up
            conn = fairy.driver_connection
            fairy.detach()  # ours from now on: kept in the free list, closed by dispose()
            conn.autocommit = True
        try:
            yield conn
        finally:
            with self._direct_lock:
                keep = generation == self._direct_generation and not conn.closed and not conn.broken
                if keep:
                    self._direct_idle.append(conn)
            if not keep:
                conn.close()

    @contextmanager
    def direct_transaction(self) -> Iterator[Any]:
        """One transaction on a kept-open psycopg connection (`direct_autocommit`'s free list): BEGIN,
        COMMIT when the block ends, ROLLBACK when it raises. PostgreSQL only: the worker's purchase fast
        path, where a pooled SQLAlchemy connection's checkout, transaction and reset cost ~8 % of the
        worker's CPU per purchase."""
        if self.dialect != "postgresql":
            raise RuntimeError("direct_transaction needs PostgreSQL")
        with self.direct_autocommit() as conn, conn.transaction():
            yield conn

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        with self._direct_lock:
            idle, self._direct_idle = self._direct_idle, []
            self._direct_generation += 1
        for conn in idle:
            conn.close()
        self.engine.dispose()


def is_unique_violation(exc: Exception) -> bool:
    """Whether an IntegrityError is a unique-key conflict (a concurrent writer won), not a broken invariant."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "23505":  # PostgreSQL unique_violation
        return True
    return "UNIQUE constraint failed" in str(orig or "")  # SQLite


def is_deadlock(exc: Exception) -> bool:
    """Whether PostgreSQL ended the transaction to break a deadlock (40P01): done again, it goes through."""
    return getattr(getattr(exc, "orig", None), "sqlstate", None) == "40P01"


def upsert_insert(session):
    """The dialect's INSERT construct (with on_conflict_do_nothing / do_update) for this session's database."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
