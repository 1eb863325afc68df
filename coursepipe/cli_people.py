"""`coursepipe admins add|list|remove` (the studio's admin accounts) and `coursepipe students erase ID`.

Each change is recorded in the audit log as done by `cli:<os user>` with the owner's rights (whoever runs
the command holds the database credentials)."""
from __future__ import annotations

import json
import sys
import time

import click

from coursepipe.cli_support import checked_reason, one_line, reason_option, record_cli_action

ERASE_ATTEMPTS = 3  # an erasure ended by PostgreSQL to break a deadlock is done again, up to this many times
ERASE_PAUSE = 0.2  # seconds before the second attempt (twice that before the third)


def _database():
    from coursepipe.cli_support import migrated_database, settings_for

    return migrated_database(settings_for().database_url)


def register(main: click.Group) -> None:
    @main.group()
    def admins() -> None:
        """Admin accounts: owner, operator or viewer."""

    @admins.command("add")
    @click.argument("email")
    @click.option("--role", type=click.Choice(["owner", "operator", "viewer"]), required=True)
    @click.option("--password-stdin", is_flag=True, help="read the password from standard input (one line)")
    @reason_option
    def admins_add(email: str, role: str, password_stdin: bool, reason: str | None) -> None:
        """Create an admin account; the password is prompted for (or read from standard input)."""
        from tasks.admins import accounts
        from tasks.errors import ValidationFailed

        reason = checked_reason(reason)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        database = _database()
        try:
            with database.session_scope() as s:
                account = accounts.add_admin(session=s, email=email, role=role, password=password)
                record_cli_action(s, "admin.add", f"admin:{account.email}", reason, role=role)
                email = account.email
        except ValidationFailed as exc:
            raise click.ClickException(one_line(str(exc))) from None
        finally:
            database.dispose()
        click.echo(f"admin {email} added as {role}")

    @admins.command("list")
    def admins_list() -> None:
        """One JSON line per admin account."""
        from tasks.admins import accounts

        database = _database()
        try:
            with database.session_scope() as s:
                rows = [accounts.admin_view(a) for a in accounts.list_admins(session=s)]
        finally:
            database.dispose()
        for row in rows:
            click.echo(json.dumps(row))

    @admins.command("remove")
    @click.argument("email")
    @reason_option
    def admins_remove(email: str, reason: str | None) -> None:
        """Remove an admin account with its sessions and API tokens (the audit log keeps what they did)."""
        from tasks.admins import accounts
        from tasks.errors import NotFound

        reason = checked_reason(reason)
        database = _database()
        try:
            with database.session_scope() as s:
                account = accounts.remove_admin(session=s, email=email)
                record_cli_action(s, "admin.remove", f"admin:{account.email}", reason)
        except NotFound as exc:
            raise click.ClickException(one_line(str(exc))) from None
        finally:
            database.dispose()
        click.echo(f"admin {email} removed")

    @main.group()
    def students() -> None:
        """Students' personal data."""

    @students.command("erase")
    @click.argument("student_id")
    @reason_option
    @click.option("--yes", is_flag=True, help="do not ask for confirmation")
    def students_erase(student_id: str, reason: str | None, yes: bool) -> None:
        """Remove a student's personal data; enrollments, payments and credits stay, anonymised."""
        from tasks.errors import NotFound
        from tasks.lifecycle import erasure

        reason = checked_reason(reason)
        if not yes:
            click.confirm(f"Erase the personal data of student {student_id}? This cannot be undone", abort=True)
        from sqlalchemy.exc import DBAPIError

        from db.database import is_deadlock

        database = _database()
        try:
            for attempt in range(1, ERASE_ATTEMPTS + 1):
                try:
                    with database.session_scope() as s:
                        erased = erasure.erase_student(session=s, student_id=student_id)
                        record_cli_action(s, "student.erase", f"student:{student_id}", reason, **erased.as_dict())
                    break
                except DBAPIError as exc:
                    # the erasure takes the student's row, then rows a booking or a payment may hold while it
                    # waits for that student: PostgreSQL ends one of the two, and the erasure starts over
                    if not is_deadlock(exc) or attempt == ERASE_ATTEMPTS:
                        raise
                    # a moment for the other, whose request was waiting on the student's row, to be granted it
                    # first: starting over at once, the erasure could take the row again and cross it again
                    time.sleep(ERASE_PAUSE * attempt)
        except NotFound as exc:
            raise click.ClickException(one_line(str(exc))) from None
        finally:
            database.dispose()
        click.echo(json.dumps(erased.as_dict()))
