"""Thin actors. Each takes ids, opens one transaction, calls one `tasks/` function.

`@actor` only marks a function with its options; the composition root declares the marked functions
of the modules it names on the broker at start-up (`declare_actors`), never at import time.
Messages go out only after the transaction that made them necessary has committed.
"""
from __future__ import annotations

import functools
import logging
from datetime import timedelta
from types import ModuleType
from typing import Callable, Collection, Iterable

import dramatiq
from dramatiq.errors import Retry

from db.types import utcnow
from tasks.inbox import parking, store
from tasks.inbox.runner import Outcome
from tasks.purchases import fast_purchase
from workers import inbox_runs, job_runs, metrics, runtime
from workers.broker import enqueue
from workers.queue_depths import messages_held
from workers.queues import INBOX_QUEUE

log = logging.getLogger("coursepipe.workers")

SWEEP_STALE_SECONDS = 30
SWEEP_BATCH = 1000  # rows read and sent at a time
SWEEP_MAX_ROWS = 100_000  # re-sent by one run at most, when the queue holds fewer messages than there are stale rows
ACTOR_OPTIONS = "_actor_options"


def actor(queue_name: str = "default", **options):
    """Mark a function as an actor with its options; `declare_actors` binds it to a broker at start-up."""

    def mark(fn: Callable) -> Callable:
        setattr(fn, ACTOR_OPTIONS, {"queue_name": queue_name, **options})
        return fn

    return mark


def declare_actors(broker: dramatiq.Broker, modules: Iterable[ModuleType]) -> dict[str, dramatiq.Actor]:
    """Declare every function marked `@actor` in `modules` on `broker`."""
    marked = [fn for module in modules for fn in vars(module).values()
              if callable(fn) and hasattr(fn, ACTOR_OPTIONS) and fn.__module__ == module.__name__]
    declared = {}
    for fn in marked:
        name = fn.__name__
        options = dict(getattr(fn, ACTOR_OPTIONS))
        queue_name = options.pop("queue_name")
        if name in broker.actors:
            broker.actors.pop(name)
        declared[name] = dramatiq.Actor(
            fn, broker=broker, actor_name=name, queue_name=queue_name, priority=0, options=options
        )
    return declared


def send(actor_name: str, *args, **kwargs) -> bool:
    """Send a message; a broker failure is logged and swallowed (the sweepers re-send from the database)."""
    try:
        enqueue(runtime.current().actors[actor_name], *args, **kwargs)
        return True
    except Exception as exc:  # Redis down: the row is durable, the sweeper will re-send it
        log.warning("could not enqueue %s%r: %s", actor_name, args, exc)
        return False


def enqueue_inbox(ids: Iterable[int], *, purchase: bool = False, purchases: Collection[int] = ()) -> int:
    """`purchase`: the ingress saw a new paid course checkout (`fast_purchase.is_purchase`); `purchases`:
    which of `ids` are such checkouts (a batch re-sent from the database)."""
    sent = 0
    for inbox_id in ids:
        # unmarked messages carry no keyword: any worker version runs them
        marked = {"purchase": True} if purchase or inbox_id in purchases else {}
        sent += send("process_inbox_event", inbox_id, **marked)
    return sent


class RetryLater(Exception):
    """Raised by an actor after committing a transient failure, so Dramatiq retries with backoff."""


@actor(queue_name=INBOX_QUEUE, max_retries=20, throws=())
def process_inbox_event(inbox_id: int, purchase: bool = False) -> None:
    rt = runtime.current()
    result = inbox_runs.run_message(database=rt.db, inbox_id=inbox_id, handlers=rt.handlers, settings=rt.settings,
                                    purchase=purchase)
    seen = result.summary
    if seen:
        metrics.event_processed(inbox_id=inbox_id, source=seen[0], event_id=seen[1], type_=seen[2],
                                subject=seen[3], outcome=result.outcome.value, received_at=seen[4],
                                committed_at=utcnow(), error=result.error)
    enqueue_inbox(result.woken)
    if result.outcome is Outcome.RETRY:
        raise RetryLater(f"inbox event {inbox_id}: {result.error}")


def resend_stale(older_than_seconds: int = SWEEP_STALE_SECONDS) -> int:
    """Re-send rows that stayed pending too long (their message was lost or never sent); how many.

    While the inbox queue holds at least as many messages as there are such rows, they may only be waiting
    their turn behind a backlog: one batch, the oldest, is re-sent. When it holds fewer, at least the
    difference was lost (Redis restarted empty, a failover to an empty replica): that many are re-sent in
    this run, batch by batch, up to SWEEP_MAX_ROWS, so recovery runs at the workers' speed instead of one
    batch per run. A re-sent paid course checkout is marked as the ingress marks it (the fast path).
    """
    rt = runtime.current()
    sent_before = utcnow() - timedelta(seconds=older_than_seconds)  # fixed for the run: a row sent in it is done
    with rt.db.session_scope() as session:
        stale = parking.count_stale_pending(session=session, sent_before=sent_before)
    if not stale:
        return 0
    held = messages_held(rt.broker, INBOX_QUEUE)
    budget = SWEEP_BATCH if held is None else min(max(stale - held, SWEEP_BATCH), SWEEP_MAX_ROWS)
    sent = 0
    while sent < budget:
        with rt.db.session_scope() as session:
            ids = parking.stale_pending(session=session, sent_before=sent_before,
                                        limit=min(SWEEP_BATCH, budget - sent))
            purchases = fast_purchase.purchases_among(session, ids)
            store.mark_enqueued(session=session, ids=ids)
        done = enqueue_inbox(ids, purchases=purchases)
        sent += done
        if done < SWEEP_BATCH:  # the last of them, or the broker refused (the next run tries again)
            break
    return sent


def requeue_parked() -> tuple[int, int]:
    """End parked events older than WAIT_HORIZON_HOURS `failed`, put the rest back to pending and send
    them (the scheduled retry); (how many sent, how many ended)."""
    rt = runtime.current()
    with rt.db.session_scope() as session:
        expired = parking.expire_waiting(session=session, horizon=timedelta(hours=rt.settings.wait_horizon_hours))
        ids = parking.requeue_waiting(session=session)
        purchases = fast_purchase.purchases_among(session, ids)
    if expired:
        log.warning("%d parked event(s) waited past WAIT_HORIZON_HOURS and failed: %s", len(expired),
                    ", ".join(map(str, expired)))
    return enqueue_inbox(ids, purchases=purchases), len(expired)


def finish_job_run(job_run: int | None, **result) -> None:
    """A scheduled job's actor records on its `job_run` row that it finished, and what it did."""
    job_runs.finish_job_run(runtime.current().db, job_run, result)


def records_failure(fn: Callable) -> Callable:
    """A scheduled job's actor that raises finishes its `job_run` with the `error` (its type and first words),
    then raises as before: `coursepipe jobs list` tells a failed run from one still running."""

    @functools.wraps(fn)
    def run(*args, job_run: int | None = None, **kwargs):
        try:
            return fn(*args, job_run=job_run, **kwargs)
        except BaseException as exc:  # Dramatiq's time limit and shutdown interrupts are BaseExceptions too
            try:
                finish_job_run(job_run, error=f"{type(exc).__name__}: {exc}"[:300])
            except Exception:  # the database is what failed: the row stays unfinished, as before
                log.warning("job run %s failed and could not be recorded", job_run)
            raise

    return run


# Actors return None: without a results backend Dramatiq warns about every returned value.
# `job_run` is the scheduler's row for this run (None when sent by anything else).
@actor(queue_name="maintenance", max_retries=0)
@records_failure
def sweep_inbox(older_than_seconds: int = SWEEP_STALE_SECONDS, job_run: int | None = None) -> None:
    finish_job_run(job_run, resent=resend_stale(older_than_seconds))


@actor(queue_name="maintenance", max_retries=0)
@records_failure
def retry_waiting(job_run: int | None = None) -> None:
    requeued, expired = requeue_parked()
    finish_job_run(job_run, requeued=requeued, expired=expired)


__all__ = ["Retry", "actor", "declare_actors", "send", "enqueue_inbox"]
