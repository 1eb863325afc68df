"""The inbox as the tests drive it: the real modules, with the handler table the composition root builds
(plus the runner tests' own `test.*` handlers).

`process_event`, `run_event` and `run_message` take the production handler table unless a test
passes its own; everything else is the inbox package's own names.
"""
from __future__ import annotations

from coursepipe.runtime import handler_table
from tasks.inbox.admin import NotReplayable, event_view, list_events, replay, replay_failed  # noqa: F401
from tasks.inbox.context import HandlerContext, lock_key  # noqa: F401
from tasks.inbox.parking import finish_and_wake, requeue_waiting, stale_pending, wake_waiting  # noqa: F401
from tasks.inbox.runner import Outcome, Result  # noqa: F401
from tasks.inbox.runner import process_event as _process_event
from tasks.inbox.store import REDELIVERY_RESEND_AFTER, Stored, mark_enqueued, store_event  # noqa: F401
from tasks.purchases import fast_purchase
from tests.workers import support
from workers import inbox_runs

# the production table, plus the runner tests' own event types (test.*)
HANDLERS = handler_table(support)


def process_event(*, handlers=None, fast: bool = True, **kwargs) -> Result:
    """With `fast`, a new paid course checkout on PostgreSQL takes the purchase fast path first."""
    return _process_event(handlers=HANDLERS if handlers is None else handlers,
                          shortcut=fast_purchase.process if fast else None, **kwargs)


def run_event(*, handlers=None, fast: bool = True, **kwargs) -> Result:
    return inbox_runs.run_event(handlers=HANDLERS if handlers is None else handlers,
                                shortcut=fast_purchase.process if fast else None, **kwargs)


def run_message(*, handlers=None, **kwargs) -> Result:
    return inbox_runs.run_message(handlers=HANDLERS if handlers is None else handlers, **kwargs)


with_remote = inbox_runs.with_remote
