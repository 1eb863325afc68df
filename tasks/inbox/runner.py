"""Running one inbox row: claim → lock its subject → the handler from the injected table → record.

`process_event` runs inside the caller's one transaction: it locks the row, serializes on the event's
subject, runs the handler and records the outcome on the row, so a handler's effects and the row's new
status commit together or not at all. The caller (a worker's unit of work) commits; when the handler
asks for remote data (`HandlerContext.fetched`), the caller fetches it between transactions and runs
the row again.
"""
from __future__ import annotations

import enum
import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session

from db.enums import InboxStatus
from db.models import InboxEvent
from db.types import utcnow
from tasks.errors import Ignored, NeedsRemote, PermanentError, WaitFor
from tasks.inbox.context import Handler, HandlerContext, HandlerTable
from tasks.inbox.parking import RUNNABLE, finish_and_wake, wake_waiting
from tasks.machines import INBOX

log = logging.getLogger("coursepipe.inbox")

DEFAULT_MAX_ATTEMPTS = 5


class Outcome(str, enum.Enum):
    PROCESSED = "processed"
    IGNORED = "ignored"
    WAITING = "waiting"
    FAILED = "failed"
    FETCH = "fetch"  # the handler needs remote data: fetch it outside the transaction, then run again
    RETRY = "retry"  # transient failure recorded; the caller should retry with backoff
    SKIPPED = "skipped"  # not ours to run now (already final, or locked by another worker)


@dataclass
class Result:
    outcome: Outcome
    error: str | None = None
    woken: list[int] = field(default_factory=list)
    needs: NeedsRemote | None = None
    # what the row was (source, event id, type, subject, received_at), for the caller's log line
    summary: tuple | None = None


# A plug-in that may run a row by a faster route in the same transaction (the purchase fast path):
# it answers a Result, or None to leave the row to the handler table.
Shortcut = Callable[[HandlerContext, int], "Result | None"]


def _claim(session: Session, inbox_id: int, *, skip_locked: bool) -> InboxEvent | None:
    query = select(InboxEvent).where(InboxEvent.id == inbox_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=skip_locked)
    event = session.scalar(query)
    return event if event is not None and event.status in RUNNABLE else None


def process_event(
    *, session: Session, inbox_id: int, handlers: HandlerTable, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    settings: Any = None, remote: dict[str, Any] | None = None, shortcut: Shortcut | None = None,
) -> Result:
    """Run the handler for one inbox row; its effects and the row's new status commit together.

    This owns the whole transaction of `session` (the caller commits it): when the handler raises,
    its effects are rolled back and the outcome is recorded on the row in a fresh transaction.
    """
    ctx = HandlerContext(session=session, settings=settings, remote=remote or {})
    if shortcut is not None:
        done = shortcut(ctx, inbox_id)
        if done is not None:
            return done
    event = _claim(session, inbox_id, skip_locked=True)
    if event is None:
        # unknown id, already final, or another worker holds it now (it finishes, or rolls back and is swept)
        return Result(Outcome.SKIPPED)
    ctx.lock(event.subject)
    summary = (event.source.value, event.event_id, event.type, event.subject, event.received_at)
    result = _run_claimed(ctx, event, inbox_id, handlers.get((event.source.value, event.type)), max_attempts)
    result.summary = summary
    return result


def _run_claimed(ctx: HandlerContext, event: InboxEvent, inbox_id: int, handler: Handler | None,
                 max_attempts: int) -> Result:
    session = ctx.session
    attempts = event.attempts + 1
    now = utcnow()
    if handler is None:
        event.attempts = attempts
        _finish(event, InboxStatus.IGNORED, now)
        return Result(Outcome.IGNORED)

    error = _attempt(ctx, handler, event)
    if error is None:
        return _processed(ctx, event, attempts, now)
    if isinstance(error, NeedsRemote):  # rolled back, the row untouched: the caller fetches and calls again
        return Result(Outcome.FETCH, str(error), needs=error)
    event = _reclaim(ctx, inbox_id, error)
    if event is None:
        return Result(Outcome.SKIPPED)
    if isinstance(error, WaitFor):
        # Look once more, now under the awaited key's lock: a provider that committed meanwhile is
        # visible, and one still to come waits for our `waiting` to commit before it wakes parked rows.
        # A savepoint, so that undoing this second try keeps the locks.
        savepoint = session.begin_nested()
        error = _attempt(ctx, handler, event, savepoint=savepoint)
        if error is None:
            return _processed(ctx, event, attempts, now)
    event.attempts = attempts
    return _record_failure(event, error, now, max_attempts)


def _attempt(ctx: HandlerContext, handler: Handler, event: InboxEvent, savepoint=None) -> Exception | None:
    """Run the handler; on an error undo its effects (the transaction, or just the savepoint)."""
    ctx.provided.clear()
    try:
        handler(ctx, event)
        ctx.session.flush()  # constraint violations surface here, inside the failure path
    except Exception as exc:
        (savepoint or ctx.session).rollback()
        if savepoint is None:  # the transaction ended: its advisory locks are gone
            ctx.rolled_back()
        else:
            ctx.provided.clear()
        return exc
    if savepoint is not None:
        savepoint.commit()
    return None


def _reclaim(ctx: HandlerContext, inbox_id: int, error: Exception) -> InboxEvent | None:
    """After a rollback: the row and its locks again (and the awaited key's, for a parked event)."""
    event = _claim(ctx.session, inbox_id, skip_locked=False)
    if event is not None:
        ctx.lock(event.subject)
        if isinstance(error, WaitFor):
            ctx.lock(error.key)
    return event


def record_failure(*, session: Session, inbox_id: int, error: Exception,
                   max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> Result:
    """Count one more attempt that failed with `error` on a runnable row (e.g. a handler that kept
    asking for remote data); SKIPPED if the row is not ours to record on."""
    event = _claim(session, inbox_id, skip_locked=True)
    if event is None:
        return Result(Outcome.SKIPPED)
    event.attempts += 1
    return _record_failure(event, error, utcnow(), max_attempts)


def _processed(ctx: HandlerContext, event: InboxEvent, attempts: int, now: datetime) -> Result:
    event.attempts = attempts  # set after the handler: one UPDATE of the row, with its status
    _finish(event, InboxStatus.PROCESSED, now)
    # what the handler provided, and the event's own subject, may be what a parked event waits for
    keys = set(ctx.provided) | ({event.subject} if event.subject else set())
    ctx.provided.clear()
    woken = finish_and_wake(session=ctx.session, event=event, keys=keys)
    if woken is None:
        woken = wake_waiting(session=ctx.session, keys=keys)
    return Result(Outcome.PROCESSED, woken=woken)


def _record_failure(event: InboxEvent, exc: Exception, now: datetime, max_attempts: int) -> Result:
    if isinstance(exc, Ignored):
        _finish(event, InboxStatus.IGNORED, now, str(exc) or None)
        return Result(Outcome.IGNORED, str(exc) or None)
    if isinstance(exc, WaitFor):
        _move(event, InboxStatus.WAITING)
        event.waiting_for = exc.key
        event.last_error = str(exc)
        return Result(Outcome.WAITING, str(exc))
    if isinstance(exc, (PermanentError, DataError)):  # DataError: a value the column cannot hold, every time
        _finish(event, InboxStatus.FAILED, now, f"{type(exc).__name__}: {exc}")
        log.warning("event %s (%s) failed permanently: %s", event.event_id, event.type, exc)
        return Result(Outcome.FAILED, str(exc))
    # transient: anything not known to be permanent
    message = f"{type(exc).__name__}: {exc}"
    if event.attempts >= max_attempts:
        _finish(event, InboxStatus.FAILED, now, f"retries exhausted; {message}")
        log.error("event %s (%s) failed after %d attempts: %s", event.event_id, event.type, event.attempts,
                  "".join(traceback.format_exception_only(exc)).strip())
        return Result(Outcome.FAILED, message)
    _move(event, InboxStatus.PENDING)
    event.last_error = message
    return Result(Outcome.RETRY, message)


def _move(event: InboxEvent, status: InboxStatus) -> None:
    INBOX.move(event, status, session=None)  # not logged: the table of moves guards it


def _finish(event: InboxEvent, status: InboxStatus, now: datetime, error: str | None = None) -> None:
    _move(event, status)
    event.processed_at = now
    event.last_error = error
    event.waiting_for = None
