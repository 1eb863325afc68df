from __future__ import annotations

from alembic import context
from sqlalchemy import event, pool

from db.database import make_engine
from db.models import Base

config = context.config
target_metadata = Base.metadata


class ForeignKeysBroken(Exception):
    """A migration on SQLite left rows naming a row that is not there: it is rolled back."""


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _foreign_keys_off(dbapi_connection, _record) -> None:
    # SQLite's batch mode copies a table and drops the old one: with foreign keys on, the drop fails as soon as a
    # row of another table names one of its rows. The pragma is ignored inside a transaction, so it is set as
    # the connection opens (after make_engine's own set-up turned them on), and each migration is checked instead.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


def _refuse_broken_foreign_keys(ctx, step, **_kw) -> None:
    """Called before each migration commits (SQLite runs each in its own transaction): raise, and so roll it back,
    when a row names a row that is not there."""
    broken = ctx.connection.exec_driver_sql("PRAGMA foreign_key_check").fetchmany(5)
    if broken:
        done = "migration" if step.is_upgrade else "undoing migration"
        raise ForeignKeysBroken(f"{done} {step.up_revision_id} left rows naming missing rows "
                                f"(table, rowid, parent table, key): {broken}")


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        event.listen(engine, "connect", _foreign_keys_off)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=sqlite,
                          on_version_apply=[_refuse_broken_foreign_keys] if sqlite else [])
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
