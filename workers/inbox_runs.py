"""Units of work around the inbox runner: one transaction per attempt, remote look-ups between them.

`tasks.inbox.runner.process_event` runs inside one transaction and never commits; this module owns the
transactions: it opens one per attempt, and when a handler asks for remote data (`NeedsRemote`) it
fetches it with no transaction open, then runs the row again with the answer.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from db.database import Database
from tasks.errors import NeedsRemote, PermanentError
from tasks.inbox.context import HandlerContext, HandlerTable
from tasks.inbox.runner import DEFAULT_MAX_ATTEMPTS, Outcome, Result, Shortcut, process_event, record_failure
from tasks.purchases import fast_purchase
from workers import metrics

log = logging.getLogger("coursepipe.inbox")

MAX_REMOTE_ROUNDS = 5  # e.g. a dispute without its payment intent: the charge, its checkout session, the intent


def run_event(*, unit_of_work: Callable, inbox_id: int, handlers: HandlerTable, settings: Any = None,
              max_attempts: int = DEFAULT_MAX_ATTEMPTS, shortcut: Shortcut | None = None) -> Result:
    """`process_event` in units of work of its own, with the remote look-ups a handler asks for fetched
    between them, outside any transaction."""
    remote: dict[str, Any] = {}
    for _ in range(MAX_REMOTE_ROUNDS):
        with unit_of_work() as session:
            result = process_event(session=session, inbox_id=inbox_id, handlers=handlers, max_attempts=max_attempts,
                                   settings=settings, remote=remote, shortcut=shortcut)
        if result.outcome is not Outcome.FETCH:
            return result
        remote[result.needs.key] = _fetch(result.needs)
    # a handler that keeps asking for more is a defect: recorded on the row, visible and replayable
    with unit_of_work() as session:
        return record_failure(session=session, inbox_id=inbox_id, max_attempts=max_attempts, error=PermanentError(
            f"the handler kept asking for remote data ({MAX_REMOTE_ROUNDS} rounds)"))


def run_message(*, database: Database, inbox_id: int, handlers: HandlerTable, settings: Any = None,
                purchase: bool = False) -> Result:
    """What a worker runs for one message. A message the ingress marked as a purchase first tries the
    purchase fast path in a transaction of its own, without an ORM session; what that does not finish
    goes to `run_event`."""
    if isinstance(inbox_id, bool) or not isinstance(inbox_id, int):  # no row to record it on: said, then dropped
        log.error("a message names inbox row %r, which is not a row id: dropped", inbox_id)
        return Result(Outcome.SKIPPED, f"not an inbox row id: {inbox_id!r}")
    if purchase:
        done = run_fast_purchase(database, inbox_id, settings)
        if done is not None:
            return done
    return run_event(unit_of_work=database.session_scope, inbox_id=inbox_id, handlers=handlers, settings=settings)


def run_fast_purchase(database: Database, inbox_id: int, settings: Any = None) -> Result | None:
    """The purchase fast path in a transaction of its own on a kept-open driver connection (no ORM session).

    None: nothing was written (rolled back) and the caller runs the general path. Only a refusal by the
    database falls back (counted by reason); any other error is a defect and propagates.
    """
    if database.dialect != "postgresql":
        return None
    try:
        with database.direct_transaction() as conn:
            done = fast_purchase.attempt(conn, inbox_id, set(), settings=settings)
            if done is None:
                raise _NotAPurchase  # rolled back by the transaction block
    except _NotAPurchase:
        return None
    except fast_purchase.DATABASE_ERRORS as exc:  # rolled back (a refused COMMIT included)
        fast_purchase.gave_up(inbox_id, exc)
        metrics.fast_path_fallback(type(exc).__name__)
        return None
    return done


class _NotAPurchase(Exception):
    """The fast path found another event: its transaction is rolled back and the general path runs."""


def with_remote(unit_of_work: Callable, work: Callable[[HandlerContext], Any], *, settings: Any = None) -> Any:
    """`work(ctx)` in a unit of work of its own, for callers outside the runner (admin re-fulfilment):
    remote look-ups it asks for (`ctx.fetched`) are made between attempts, outside any transaction."""
    remote: dict[str, Any] = {}
    for _ in range(MAX_REMOTE_ROUNDS):
        try:
            with unit_of_work() as session:
                return work(HandlerContext(session=session, settings=settings, remote=remote))
        except NeedsRemote as needs:  # rolled back by the unit of work
            remote[needs.key] = _fetch(needs)
    raise PermanentError(f"kept asking for remote data ({MAX_REMOTE_ROUNDS} rounds)")


def _fetch(needs: NeedsRemote) -> Any:
    try:
        return needs.fetch()
    except Exception as exc:  # handed back to the handler, which raises it where it is classified
        return exc
