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


def test_0004_gives_rows_written_before_it_random_ids_and_their_sequence(tmp_path):
    """Outbox rows and enrollments that existed before the public ids: each row gets its own random id,
    platform events their per-enrollment sequence in the order written, the enrollment its counter."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0003")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO student (id, created_at, updated_at) VALUES ('s', '2026-01-01', '2026-01-01')"))
        conn.execute(sa.text("INSERT INTO course_program (id, code, title, timezone, price_amount, price_currency, "
                             "status, created_at, updated_at) VALUES (1, 'C', 'C', 'UTC', 0, 'usd', 'published', "
                             "'2026-01-01', '2026-01-01')"))
        for eid in (1, 2):
            conn.execute(sa.text(
                "INSERT INTO student_course_enrollment (id, student_id, program_id, status, "
                "stripe_checkout_session_id, amount_total, amount_refunded, fulfilment_metadata, created_at, "
                "updated_at) VALUES (:id, 's', 1, 'active', :cs, 0, 0, '{}', '2026-01-01', '2026-01-01')"),
                {"id": eid, "cs": f"cs_{eid}"})
        rows = [(1, "platform", 1), (2, "mail", 1), (3, "platform", 2), (4, "platform", 1), (5, "platform", None)]
        for row_id, channel, eid in rows:
            conn.execute(sa.text(
                "INSERT INTO outbox_message (id, dedupe_key, channel, topic, payload, status, attempts, "
                "enrollment_id, created_at, next_attempt_at) VALUES (:id, :k, :c, 't', '{}', 'sent', 1, :e, "
                "'2026-01-01', '2026-01-01')"), {"id": row_id, "k": f"k{row_id}", "c": channel, "e": eid})
    upgrade(url)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT id, public_id, sequence FROM outbox_message ORDER BY id")).all()
        counters = dict(conn.execute(sa.text("SELECT id, last_event_sequence FROM student_course_enrollment")).all())
    engine.dispose()
    assert [(row_id, seq) for row_id, _, seq in found] == [(1, 1), (2, None), (3, 1), (4, 2), (5, 1)]
    public_ids = [public_id for _, public_id, _ in found]
    assert len(set(public_ids)) == 5 and all(len(p) == 32 and int(p, 16) >= 0 for p in public_ids)
    assert counters == {1: 2, 2: 1}
