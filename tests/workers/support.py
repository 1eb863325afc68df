"""Handlers used only by the runner tests. Each visible effect is one alert_log row per run."""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from db.enums import InboxSource
from db.models import AlertLog
from tasks.errors import PermanentError, WaitFor
from tasks.inbox.context import HandlerContext

BEHAVIOUR: dict[str, dict] = {}  # event_id -> {"fail_times": n} or {"broken": True}


def _effect(session, event, tag="effect"):
    session.add(AlertLog(kind="test", dedupe_key=f"{tag}:{event.event_id}:{uuid.uuid4().hex}",
                         subject=event.event_id))
    session.flush()


def effect(ctx: HandlerContext, event):
    session = ctx.session
    _effect(session, event)


def flaky(ctx: HandlerContext, event):
    session = ctx.session
    _effect(session, event)  # rolled back with the savepoint when we raise
    behaviour = BEHAVIOUR.get(event.event_id, {})
    attempt = event.attempts + 1  # the row records this attempt after the handler returns or raises
    if behaviour.get("broken") or attempt <= behaviour.get("fail_times", 0):
        raise RuntimeError(f"flaky failure on attempt {attempt}")


def permanent(ctx: HandlerContext, event):
    session = ctx.session
    _effect(session, event)
    raise PermanentError("unknown course XYZ")


def wait(ctx: HandlerContext, event):
    session = ctx.session
    key = event.payload["data"]["needs"]
    if session.query(AlertLog).filter(AlertLog.subject == key).count() == 0:
        raise WaitFor(key)
    _effect(session, event)


def provide(ctx: HandlerContext, event):
    session = ctx.session
    session.add(AlertLog(kind="provided", dedupe_key=f"provide:{event.event_id}", subject=event.payload["data"]["key"]))
    ctx.provides(event.payload["data"]["key"])


def provide_and_prune(ctx: HandlerContext, event):
    """Provides like `provide`, and changes its own row beyond what the runner writes (as retention's
    payload pruning does): the row's own UPDATE must keep that change."""
    provide(ctx, event)
    event.payload = {**event.payload, "pruned": True}


def slow(ctx: HandlerContext, event):
    """Writes its effect, signals through a file that it is inside the transaction, then blocks."""
    session = ctx.session
    _effect(session, event)
    marker = os.environ.get("COURSEPIPE_TEST_MARKER")
    if marker and not Path(marker + ".done").exists():
        Path(marker).write_text(str(os.getpid()))
        time.sleep(120)  # the test SIGKILLs us here, mid-transaction


GATES: dict[str, dict] = {}  # event_id -> {"checked": threading.Event, "go": threading.Event}


def wait_gated(ctx: HandlerContext, event):
    """Like test.wait, but pauses after finding nothing, so a provider can commit in between."""
    session = ctx.session
    key = event.payload["data"]["needs"]
    found = session.query(AlertLog).filter(AlertLog.subject == key).count()
    gate = GATES.get(event.event_id)
    if gate is not None and not gate["checked"].is_set():
        gate["checked"].set()
        gate["go"].wait(timeout=30)
    if not found:
        raise WaitFor(key)
    _effect(session, event)


REMOTE_CALLS: list[dict] = []  # what each remote fetch saw
REMOTE_PROBE = {"open_connections": lambda: None}  # a test sets how to count open connections


def remote(ctx: HandlerContext, event):
    """Needs a remote answer; its effect records what came back."""
    session = ctx.session
    event_id, fails = event.event_id, event.payload["data"].get("remote_fails")  # plain values: no ORM outside

    def fetch():
        REMOTE_CALLS.append({"event_id": event_id, "open_connections": REMOTE_PROBE["open_connections"]()})
        if fails:
            raise RuntimeError("remote service down")
        return {"price": "price_1"}

    answer = ctx.fetched(f"remote:{event.event_id}", fetch)
    session.add(AlertLog(kind="test", dedupe_key=f"remote:{event.event_id}", subject=answer["price"]))


def greedy(ctx: HandlerContext, event):
    """Asks for one more remote answer every time it runs (a defect the runner must record, not loop on)."""
    session = ctx.session
    ctx.fetched(f"greedy:{len(ctx.remote)}", lambda: "answer")


HANDLERS = {
    (InboxSource.PLATFORM.value, "test.effect"): effect,
    (InboxSource.PLATFORM.value, "test.flaky"): flaky,
    (InboxSource.PLATFORM.value, "test.permanent"): permanent,
    (InboxSource.PLATFORM.value, "test.wait"): wait,
    (InboxSource.PLATFORM.value, "test.provide"): provide,
    (InboxSource.PLATFORM.value, "test.provide_and_prune"): provide_and_prune,
    (InboxSource.PLATFORM.value, "test.slow"): slow,
    (InboxSource.PLATFORM.value, "test.wait_gated"): wait_gated,
    (InboxSource.PLATFORM.value, "test.remote"): remote,
    (InboxSource.PLATFORM.value, "test.greedy"): greedy,
}
