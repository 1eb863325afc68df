"""What every `coursepipe` command shares: settings read once (a missing secret is one clear line), the
runtime built by the composition root, and the audit entry of a command that changes something.

A command that changes state records who ran it (`cli:<os user>`, with the owner's rights: whoever runs
it holds the database credentials), what it did and, with `--reason`, why — in the same transaction as
the change where there is one."""
from __future__ import annotations

import getpass

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


def runtime_for(settings: Settings):
    from coursepipe.runtime import init_runtime  # the wiring is built only by commands that need it

    return init_runtime(settings)


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
    """The command's audit entry, in the caller's transaction."""
    from tasks.admins import audit

    return audit.record(session=session, principal=cli_principal(), action=action, target=target, reason=reason,
                        details=details)
