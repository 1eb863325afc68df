"""What every `coursepipe` command shares: settings read once (a missing secret is one clear line), the
database checked at the migration head, and the runtime built by the composition root."""
from __future__ import annotations

import click

from coursepipe.settings import ConfigError, Settings


def settings_for(*required: str) -> Settings:
    try:
        return Settings.from_env().require(*required)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def migrated_database(database_url: str):
    """The database, refused in one line naming `coursepipe db upgrade` (exit 1) unless it is at the migration
    head: every command that touches it starts here, all but `db upgrade|downgrade` and `doctor`."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.database import Database
    from db.migrate import NotAtHead, missing_sqlite_file, require_head

    path = missing_sqlite_file(database_url)
    if path:  # connecting would create an empty file
        raise click.ClickException(f"no database file {path}: run `coursepipe db upgrade`")
    database = Database(database_url)
    try:
        require_head(database.engine)
    except NotAtHead as exc:
        database.dispose()
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        database.dispose()
        cause = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"database unreachable: {type(cause).__name__}: "
                                   f"{(str(cause).splitlines() or [''])[0][:200]}") from None
    return database


def runtime_for(settings: Settings):
    from coursepipe.runtime import init_runtime  # the wiring is built only by commands that need it

    return init_runtime(settings, db=migrated_database(settings.database_url))
