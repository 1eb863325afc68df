"""What every `coursepipe` command shares: settings read once (a missing secret is one clear line), the
database checked at the migration head, the runtime built by the composition root, and the audit
entry of a command that changes something.

A command that changes state records who ran it (`cli:<os user>`, with the owner's rights: whoever runs
it holds the database credentials), what it did and, with `--reason`, why — in the same transaction as
the change where there is one."""
from __future__ import annotations

import getpass
import logging

import click

from coursepipe.settings import ConfigError, Settings

# why, for the audit log: optional on the repairs (replay, re-fulfil, retry, import, publish, job run),
# as on their dashboard buttons; the entry is written with or without it
reason_option = click.option("--reason", default=None, help="why, for the audit log (e.g. a ticket reference)")


def settings_for(*required: str) -> Settings:
    try:
        return Settings.from_env().require(*required)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


class DatabaseUnreachable(click.ClickException):
    """The database did not answer (one that answers behind the head is a plain ClickException)."""


# a row id or a count given on the command line: beyond 64 bits it is no id of ours (one line, exit 2)
ROW_ID = click.IntRange(1, 2**63 - 1)


def one_line(text: str) -> str:
    """An error's text on one line (Stripe's, YAML's and Alembic's messages hold line breaks)."""
    return " ".join(str(text).split())


def not_usable(exc: BaseException) -> str:
    """Why DATABASE_URL cannot be used (not a URL SQLAlchemy reads, or its driver is not installed), in one line."""
    return one_line(f"DATABASE_URL is not usable: {type(exc).__name__}: {exc}")[:300]


def usable_database(database_url: str):
    """The Database for DATABASE_URL, or one line saying it is not a URL coursepipe can use."""
    from db.database import Database

    try:
        return Database(database_url)
    except Exception as exc:
        raise click.ClickException(not_usable(exc)) from None


def migrated_database(database_url: str):
    """The database, refused in one line naming `coursepipe db upgrade` (exit 1) unless it is at the migration
    head: every command that touches it starts here, all but `db upgrade|downgrade` and `doctor`."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.migrate import NotAtHead, missing_sqlite_file, require_head

    try:
        path = missing_sqlite_file(database_url)
    except Exception as exc:  # not a URL at all
        raise click.ClickException(not_usable(exc)) from None
    if path:  # connecting would create an empty file
        raise click.ClickException(f"no database file {path}: run `coursepipe db upgrade`")
    database = usable_database(database_url)
    try:
        require_head(database.engine)
    except NotAtHead as exc:
        database.dispose()
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        database.dispose()
        cause = getattr(exc, "orig", None) or exc
        raise DatabaseUnreachable(f"database unreachable: {type(cause).__name__}: "
                                   f"{(str(cause).splitlines() or [''])[0][:200]}") from None
    return database


def process_database(database_url: str):
    """For the processes that run on (`ingress`, `worker`, `scheduler`): a database behind the head or a
    missing SQLite file is refused as every command refuses it, but one that does not answer is reported
    in one line and the process starts and waits for it (the ingress answers 503 meanwhile, workers
    retry), as `gunicorn ingress.wsgi:app` and `dramatiq workers.app` do: a process restarted during an
    outage comes back with the database."""
    try:
        return migrated_database(database_url)
    except DatabaseUnreachable as exc:
        from db.database import Database

        logging.getLogger("coursepipe.cli").warning("%s; starting anyway, waiting for it", exc.message)
        return Database(database_url)


def runtime_for(settings: Settings, *, process: bool = False):
    """The runtime over the checked database (`process`: one that does not answer yet is waited for)."""
    db = (process_database if process else migrated_database)(settings.database_url)
    # the wiring is imported once the database is accepted, and only by commands that need it
    from coursepipe.runtime import init_runtime

    return init_runtime(settings, db=db)


def cli_principal():
    from tasks.admins.accounts import Principal

    return Principal(actor=f"cli:{getpass.getuser()}", role="owner")


def checked_reason(value: str | None) -> str | None:
    """A `--reason` as the audit log keeps it: stripped, None when blank; too long is refused up front."""
    from tasks.admins.audit import MAX_REASON

    reason = (value or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        raise click.BadParameter(f"at most {MAX_REASON} characters", param_hint="--reason")
    return reason


def record_cli_action(session, action: str, target: str | None, reason: str | None, **details):
    """The command's audit entry, in the caller's transaction (its log line once that commits, as for the web)."""
    from tasks.admins import audit

    principal = cli_principal()
    return audit.record(session=session, principal=principal, action=action, target=target, reason=reason,
                        details=details, log_fields={"actor": principal.actor})
