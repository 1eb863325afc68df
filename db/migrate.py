"""Run Alembic programmatically (`coursepipe db upgrade`), without an alembic.ini on disk."""
from __future__ import annotations

import functools
import os
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


class NotAtHead(Exception):
    """Raised when the database is not at the newest migration: `coursepipe db upgrade` first."""


@functools.cache
def head_revision() -> str | None:
    """The newest migration's revision (read from the migration scripts once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine) -> str | None:
    """The revision the database is at (None: never migrated).

    Read from Alembic's table directly: a MigrationContext logs two INFO lines per call, and /readyz asks often.
    """
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite database file that does not exist yet (connecting would create it empty)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path and path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
        return path
    return None


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this release's migration scripts hold."""
    from alembic.script import ScriptDirectory

    return frozenset(script.revision for script in
                     ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions())


def migration_advice(current: str | None) -> str | None:
    """Where a database at `current` stands against this release, and what to run, in one line ("at migration
    …"); None at the head. Behind it: `coursepipe db upgrade`. At a revision this release does not have (a later
    release migrated the database, and this one was deployed in its place): that release's
    `coursepipe db downgrade <this head>` first (see docs/runbook.md, "Rolling back a release")."""
    head = head_revision()
    if current == head:
        return None
    if current is not None and current not in known_revisions():
        return (f"at migration {current}, which this release does not have (a later release migrated it): run that "
                f"release, or downgrade with it first (`coursepipe db downgrade {head}`)")
    return f"at migration {current or 'none (no tables)'}, not at the head {head}: run `coursepipe db upgrade`"


def require_head(engine) -> None:
    """Raise NotAtHead, in one line saying what to run (`migration_advice`), unless the database is at the head."""
    advice = migration_advice(current_revision(engine))
    if advice is not None:
        raise NotAtHead(f"the database is {advice}")


def refuse_if_behind(engine) -> None:
    """For entry modules (`gunicorn ingress.wsgi:app`, `dramatiq workers.app`): raise NotAtHead when the database
    answers and is not at the head. One that does not answer is left to the process's own retries: a worker
    restarted during an outage must come up and wait, not fail to boot."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        require_head(engine)
    except SQLAlchemyError:
        return
