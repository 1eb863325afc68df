"""The composition root: settings, database, broker, the inbox's handler table and the actors, wired
once at start-up (never at import)."""
from __future__ import annotations

from db.database import Database
from tasks.bookings import handlers as booking_handlers
from tasks.catalog import handlers as catalog_handlers
from tasks.inbox.context import HandlerTable
from tasks.purchases import handlers as purchase_handlers
from tasks.stripe_api import mode_guarded
from workers import actors, jobs
from workers import runtime as worker_runtime
from workers.broker import make_broker
from workers.heartbeats import Heartbeats
from workers.runtime import Runtime

from coursepipe.settings import Settings

# every domain package's handlers; a (source, type) pair named twice is a wiring defect
HANDLER_MODULES = (purchase_handlers, booking_handlers, catalog_handlers)
ACTOR_MODULES = (actors, jobs)


def handler_table(*extra) -> HandlerTable:
    """The table of every domain package's handlers (and `extra` modules', e.g. a test's own).

    Every Stripe handler first ends an event of the other mode (`livemode` against the key's) `ignored`.
    """
    table: dict = {}
    for module in (*HANDLER_MODULES, *extra):
        for key, handler in module.HANDLERS.items():
            if key in table:
                raise RuntimeError(f"two handlers for {key}: {table[key].__qualname__} and {handler.__qualname__}")
            table[key] = mode_guarded(handler) if key[0] == "stripe" else handler
    return table


def init_runtime(settings: Settings, *, db: Database | None = None, broker=None,
                 handlers: HandlerTable | None = None) -> Runtime:
    """Build (or rebuild, in tests) the runtime: database, broker, handler table and declared actors."""
    broker = broker or make_broker(settings)
    runtime = Runtime(settings=settings, db=db or Database(settings.database_url), broker=broker,
                      handlers=handler_table() if handlers is None else handlers)
    worker_runtime.install(runtime)
    broker.add_middleware(Heartbeats(lambda: runtime.db))  # worker liveness, shown on the dashboard
    runtime.actors = actors.declare_actors(broker, ACTOR_MODULES)
    return runtime


def current() -> Runtime:
    return worker_runtime.current()


def reset_runtime() -> None:
    worker_runtime.reset()
