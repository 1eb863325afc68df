"""Property: a random valid history of bookings, cancellations and attendance for one enrollment (course
steps, rebookings after cancels and no-shows, and credit bookings), delivered shuffled and duplicated,
ends in the same state as delivered once in order.

Runs on SQLite and PostgreSQL (the `database` fixture); each example starts from empty tables.
"""
from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.enums import InboxSource
from tests import inbox_api as inbox
from tasks.events import platform_subject
from tests.conftest import _truncate
from tests.tasks.bookings.bookings_support import (
    at,
    attendance,
    booking_cancelled,
    booking_created,
    rejections,
    run,
    state,
    world,
)

STEPS = 3
CREDITS = 2
# what happens to a booking once made; "stays" only for the last one of a step
STEP_FATES = ["cancel_within", "cancel_outside", "attended", "no_show", "stays"]
CREDIT_FATES = ["cancel_within", "cancel_outside", "attended", "stays"]


@st.composite
def histories(draw):
    """Events in the order they happened on the platform (each a dict ready to deliver)."""
    clock = iter(range(0, 10_000, 7))
    events: list[dict] = []
    open_steps = {p: 0 for p in range(1, STEPS + 1)}  # position -> bookings made so far
    credit_bookings = draw(st.integers(min_value=0, max_value=CREDITS))
    todo = [("step", p) for p in open_steps] + [("credit", n) for n in range(credit_bookings)]
    # interleave the steps' chains (and credit bookings) at random
    while todo:
        kind, key = draw(st.sampled_from(todo))
        if kind == "credit":
            todo.remove((kind, key))
            bid = f"bk_credit_{key}"
            events.append(("created", bid, None, next(clock)))
            fate = draw(st.sampled_from(CREDIT_FATES))
            if fate != "stays":
                events.append((fate, bid, None, next(clock)))
            continue
        n = open_steps[key] = open_steps[key] + 1
        bid = f"bk_s{key}_{n}"
        events.append(("created", bid, key, next(clock)))
        fate = draw(st.sampled_from(STEP_FATES if n < 3 else ["attended", "stays", "cancel_within"]))
        if fate == "stays":
            todo.remove((kind, key))
            continue
        events.append((fate, bid, key, next(clock)))
        if fate == "attended" or not draw(st.booleans()):  # completed, or the student stops here
            todo.remove((kind, key))
    return events


def _envelopes(history, w) -> list[dict]:
    out = []
    for what, bid, position, minute in history:
        when = at(minute)
        if what == "created":
            if position is None:
                out.append(booking_created(bid, "gc_plain", credit_type="group", when=when))
            else:
                out.append(booking_created(bid, w.option(position), step_id=w.step_ids[position - 1], when=when))
        elif what.startswith("cancel"):
            out.append(booking_cancelled(bid, within_policy=what == "cancel_within", when=when))
        else:
            out.append(attendance(bid, "attended" if what == "attended" else "no_show", when=when))
    return out


def _deliver(database, event: dict) -> None:
    """As the ingress does: store once per event id; only a new row is processed."""
    with database.session_scope() as s:
        stored = inbox.store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"], type=event["type"],
                                   payload=event, subject=platform_subject(event["type"], event["data"]),
                                   occurred_at=at(0).fromisoformat(event["occurred_at"]))
    if not stored.duplicate:
        run(database, stored.id)


def _play(database, history, plan=None) -> dict:
    _truncate(database)
    w = world(database, steps=STEPS, group_credits=CREDITS)
    events = _envelopes(history, w)
    for index, how in plan if plan is not None else [(i, "first") for i in range(len(events))]:
        event = events[index]
        if how == "twin":
            event = {**event, "id": f"pev_{uuid.uuid4().hex[:16]}"}
        _deliver(database, event)
    final = state(database, w)
    final["rejections"] = rejections(database)
    return final


@st.composite
def deliveries(draw, n):
    plan = []
    for index in range(n):
        plan.append((index, "first"))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            plan.append((index, draw(st.sampled_from(["redelivery", "twin"]))))
    return draw(st.permutations(plan))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_shuffled_and_duplicated_delivery_ends_as_in_order(database, data):
    history = data.draw(histories(), label="history")
    plan = data.draw(deliveries(len(history)), label="delivery")
    in_order = _play(database, history)
    assert in_order["rejections"] == {}  # a valid history: the platform never books what it may not
    shuffled = _play(database, history, plan)
    assert shuffled == in_order, (history, plan)
