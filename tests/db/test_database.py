"""Database.direct_autocommit: the ingress's kept-open, per-thread connection."""
from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy.engine import Connection

from db.database import Database


def _backend_pid(conn) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_one_connection_per_thread_kept_between_calls(pg_database):
    with pg_database.direct_autocommit() as first:
        pid = _backend_pid(first)
    with pg_database.direct_autocommit() as again:
        assert again is first and _backend_pid(again) == pid
        assert again.autocommit  # each statement durable on its own

    other = {}

    def in_another_thread():
        with pg_database.direct_autocommit() as conn:
            other["pid"] = _backend_pid(conn)

    thread = threading.Thread(target=in_another_thread)
    thread.start()
    thread.join()
    assert other["pid"] != pid


def test_a_terminated_backend_fails_one_statement_and_is_replaced(pg_database):
    with pg_database.direct_autocommit() as conn:
        pid = _backend_pid(conn)
    with pg_database.engine.connect() as admin:
        admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(psycopg.OperationalError):
        with pg_database.direct_autocommit() as conn:
            conn.execute("SELECT 1")
    with pg_database.direct_autocommit() as fresh:
        assert fresh is not conn and _backend_pid(fresh) != pid


def test_dispose_closes_the_direct_connections(pg_database):
    with pg_database.direct_autocommit() as conn:
        pass
    pg_database.dispose()
    assert conn.closed
    with pg_database.direct_autocommit() as fresh:  # usable again after dispose
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def test_sqlite_gets_an_autocommit_connection(sqlite_url):
    database = Database(sqlite_url)
    with database.direct_autocommit() as conn:
        assert isinstance(conn, Connection)
        assert conn.get_execution_options()["isolation_level"] == "AUTOCOMMIT"
    database.dispose()
