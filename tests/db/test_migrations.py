"""Migrations run up and down on SQLite and on an empty PostgreSQL database."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

import sqlalchemy as sa

from db.migrate import downgrade, upgrade
from db.models import Base
from tests.conftest import PG_URL, need


def _tables(url):
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_sqlite_up_down_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
    downgrade(url)
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)


def test_cli_upgrade_on_empty_postgres_then_downgrade_base():
    need("postgres")
    name = f"coursepipe_mig_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        env = {**os.environ, "DATABASE_URL": url}
        cli = [sys.executable, "-m", "coursepipe.cli"]
        subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True)
        assert _tables(url) == set(Base.metadata.tables)
        subprocess.run([*cli, "db", "downgrade", "base"], env=env, check=True, capture_output=True)
        assert _tables(url) == set()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_models_match_migrations(database):
    """Autogenerate finds nothing to add: the migration files describe the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
