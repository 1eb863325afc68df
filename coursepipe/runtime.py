"""The process-wide wiring: settings, database and broker, built once at start-up (never at import)."""
from __future__ import annotations

from dataclasses import dataclass

from coursepipe.settings import Settings
from db.database import Database


@dataclass
class Runtime:
    settings: Settings
    db: Database
    broker: object  # dramatiq.Broker
    actors: dict


_current: Runtime | None = None


def init_runtime(settings: Settings, *, db: Database | None = None, broker=None) -> Runtime:
    """Build (or rebuild, in tests) the runtime: database, broker and declared actors."""
    global _current
    from workers.broker import make_broker
    from workers.actors import declare_actors

    database = db or Database(settings.database_url)
    broker = broker or make_broker(settings)
    runtime = Runtime(settings=settings, db=database, broker=broker, actors={})
    _current = runtime
    runtime.actors = declare_actors(broker)
    return runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("coursepipe runtime is not initialised (call init_runtime at start-up)")
    return _current


def reset_runtime() -> None:
    global _current
    _current = None
