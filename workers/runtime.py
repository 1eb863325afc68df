"""The process's wiring as actors see it: settings, database, broker, declared actors and handler table.

Built once at start-up by the composition root (`coursepipe.runtime.init_runtime`), never at import.
Actors are plain functions that Dramatiq calls with ids only; this is how they find the database.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from db.database import Database
from tasks.inbox.context import HandlerTable


@dataclass
class Runtime:
    settings: Any  # coursepipe.settings.Settings
    db: Database
    broker: Any  # dramatiq.Broker
    handlers: HandlerTable = field(default_factory=dict)
    actors: dict = field(default_factory=dict)


_current: Runtime | None = None


def install(runtime: Runtime) -> Runtime:
    global _current
    _current = runtime
    return runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("coursepipe runtime is not initialised (call init_runtime at start-up)")
    return _current


def reset() -> None:
    global _current
    _current = None
