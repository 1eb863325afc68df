"""Database.direct_autocommit: the ingress's kept-open connections (a free list, not per thread)."""
from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy.engine import Connection

from db.database import Database


def _backend_pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_a_connection_is_kept_between_calls_and_threads_and_each_call_at_once_has_its_own(pg_database):
    with pg_database.direct_autocommit() as first:
        pid = _backend_pid(first)
        assert first.autocommit  # each statement durable on its own
        with pg_database.direct_autocommit() as second:  # two calls at once: two connections
            assert _backend_pid(second) != pid
    seen = []

    def in_a_new_thread():  # a threaded server's short-lived request thread
        with pg_database.direct_autocommit() as conn:
            seen.append(_backend_pid(conn))

    for _ in range(5):
        thread = threading.Thread(target=in_a_new_thread)
        thread.start()
        thread.join()
    with pg_database.engine.connect() as admin:
        open_here = admin.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).scalar()
    # no connection per thread: the threads reused the two kept open
    assert set(seen) <= {pid, _backend_pid(second)} and len(pg_database._direct_idle) == 2
    assert open_here <= 2 + pg_database.engine.pool.checkedin()


def test_a_terminated_backend_fails_one_statement_and_is_replaced(pg_database):
    with pg_database.direct_autocommit() as conn:
        pid = _backend_pid(conn)
    with pg_database.engine.connect() as admin:
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(psycopg.OperationalError):
        with pg_database.direct_autocommit() as conn:
            conn.execute("SELECT 1")
    assert conn.closed and pg_database._direct_idle == []  # dropped, not kept
    with pg_database.direct_autocommit() as fresh:
        assert fresh is not conn and _backend_pid(fresh) != pid


def test_dispose_closes_kept_connections_and_those_in_use_when_they_return(pg_database):
    with pg_database.direct_autocommit() as in_use:
        with pg_database.direct_autocommit() as kept:
            pass
        assert pg_database._direct_idle == [kept]
        pg_database.dispose()
        assert kept.closed and not in_use.closed
    assert in_use.closed and pg_database._direct_idle == []
    with pg_database.direct_autocommit() as fresh:  # usable again after dispose
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_sqlite_gets_an_autocommit_connection(sqlite_url):
    database = Database(sqlite_url)
    with database.direct_autocommit() as conn:
        assert isinstance(conn, Connection)
        assert conn.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
    database.dispose()


def test_direct_transaction_commits_at_the_end_rolls_back_on_an_error_and_returns_the_connection_idle(pg_database):
    with pg_database.direct_autocommit() as conn:
        conn.execute("CREATE TABLE direct_tx (n int)")
    with pg_database.direct_transaction() as conn:
        pid = _backend_pid(conn)
        conn.execute("INSERT INTO direct_tx VALUES (1)")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # one transaction, not autocommit
    with pytest.raises(ZeroDivisionError):
        with pg_database.direct_transaction() as conn:
            conn.execute("INSERT INTO direct_tx VALUES (2)")
            1 / 0
    with pytest.raises(psycopg.errors.UniqueViolation):
        with pg_database.direct_transaction() as conn:
            conn.execute("INSERT INTO direct_tx VALUES (3)")
            conn.execute("CREATE UNIQUE INDEX ON direct_tx ((1))")  # refused: two rows
    with pg_database.direct_autocommit() as conn:
        # the same kept connection, back in autocommit and idle; only the committed row is there
        assert _backend_pid(conn) == pid and conn.autocommit
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert [r[0] for r in conn.execute("SELECT n FROM direct_tx ORDER BY n")] == [1]
        conn.execute("DROP TABLE direct_tx")


def test_direct_transaction_needs_postgresql(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(RuntimeError):
        with database.direct_transaction():
            pass
    database.dispose()
