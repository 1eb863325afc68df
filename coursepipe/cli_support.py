"""What every `coursepipe` command shares: settings read once (a missing secret is one clear line) and
the runtime built by the composition root."""
from __future__ import annotations

import click

from coursepipe.settings import ConfigError, Settings


def settings_for(*required: str) -> Settings:
    try:
        return Settings.from_env().require(*required)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def runtime_for(settings: Settings):
    from coursepipe.runtime import init_runtime  # the wiring is built only by commands that need it

    return init_runtime(settings)
