"""Reconciliation over Stripe's Events API: every handled event Stripe sent (or failed to send) in the last
30 days that the inbox lacks is stored exactly as the webhook would have stored it.

Two steps, so no Stripe call runs inside a transaction:
1. `list_events` (network, no transaction) asks `GET /v1/events` for the handled types (`types[]`) since
   `created[gte]`: first the events whose webhook delivery failed (`delivery_success=false`, newest first,
   with half the calls at most), then every event, newest first, resuming where the last run stopped
   (`starting_after`) — at most `max_calls` list requests a run, so a busy account is walked over several
   runs instead of in one long burst, and the walk goes on however many deliveries failed.
2. `record_missing` (one unit of work) stores each event the inbox lacks under its own Stripe event id
   (`store_event`, the ingress's insert), with the subject the ingress gives it: an event recovered here
   and delivered later is one row (the delivery is a duplicate), and one delivered first is never stored
   again. The normal handlers then apply it, livemode and ownership checks included.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import InboxSource
from db.models import InboxEvent
from db.types import utcnow
from tasks.events import InvalidEvent, parse_stripe_event
from tasks.inbox.store import store_event
from tasks.stripe_api import stripe_client

log = logging.getLogger("coursepipe.reconcile")

LOOKBACK = timedelta(days=30)  # how long Stripe keeps events listable
PAGE_SIZE = 100  # Stripe's largest page
MAX_CALLS = 20  # list requests a run: at most 2,000 events looked at
TYPES_PER_CALL = 20  # Stripe's limit on `types[]`


@dataclass
class Listing:
    """What one run read from Stripe (no transaction involved)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    # the last event id of the full walk when it stopped on the call budget (the next run resumes there);
    # None when the walk reached the end of the window
    cursor: str | None = None
    undelivered: int = 0  # events Stripe lists as not delivered


@dataclass
class Report:
    checked: int = 0
    recovered: list[tuple[str, str]] = field(default_factory=list)  # (event id, type) newly stored
    inbox_ids: list[int] = field(default_factory=list)  # to enqueue after commit
    invalid: list[str] = field(default_factory=list)  # event ids the inbox cannot hold (logged)

    def by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, type_ in self.recovered:
            counts[type_] = counts.get(type_, 0) + 1
        return dict(sorted(counts.items()))


def _pages(client, params: dict[str, Any], budget: int, starting_after: str | None = None):
    """Pages of `GET /v1/events` with `params` while the budget lasts: (events, has_more) per call."""
    cursor = starting_after
    for _ in range(budget):
        query = dict(params, limit=PAGE_SIZE)
        if cursor:
            query["starting_after"] = cursor
        page = client.v1.events.list(params=query)
        events = [e.to_dict(for_json=True) for e in page.data]
        yield events, bool(page.has_more)
        if not page.has_more or not events:
            return
        cursor = events[-1]["id"]


def list_events(*, settings: Any, types: Iterable[str], lookback: timedelta = LOOKBACK, max_calls: int = MAX_CALLS,
                resume_after: str | None = None, now: datetime | None = None, client: Any = None) -> Listing:
    """The handled events of the window, undelivered ones first (network calls, no transaction)."""
    import stripe

    types = sorted(set(types))
    if not types:
        return Listing()
    if len(types) > TYPES_PER_CALL:
        raise ValueError(f"at most {TYPES_PER_CALL} event types in one listing, got {len(types)}")
    client = client or stripe_client(settings, purpose="reconciliation needs it")
    since = int(((now or utcnow()) - lookback).timestamp())
    base = {"types": types, "created": {"gte": since}}
    listing = Listing()
    seen: set[str] = set()

    def keep(events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("id") not in seen:
                seen.add(event.get("id"))
                listing.events.append(event)

    # the undelivered first, with half the calls at most: however many there are, the full walk (which also
    # meets every undelivered event) goes on from where the last run stopped
    for events, _ in _pages(client, dict(base, delivery_success="false"), max_calls // 2):
        listing.calls += 1
        listing.undelivered += len(events)
        keep(events)
    budget = max_calls - listing.calls
    try:
        _walk(client, base, budget, resume_after, listing, keep)
    except stripe.InvalidRequestError:
        if not resume_after:
            raise
        # the event the last run stopped at has left the window: walk again from the newest
        _walk(client, base, budget - 1, None, listing, keep)
    return listing


def _walk(client, base, budget: int, resume_after: str | None, listing: Listing, keep) -> None:
    """The full walk from `resume_after`; leaves on `listing.cursor` where the next run resumes."""
    listing.cursor = None
    for events, has_more in _pages(client, base, budget, resume_after):
        listing.calls += 1
        keep(events)
        listing.cursor = events[-1]["id"] if has_more and events else None


def record_missing(*, session: Session, events: Iterable[dict[str, Any]]) -> Report:
    """Store each listed event the inbox lacks, as the webhook would have (its id, type, subject, payload)."""
    events = [e for e in events if isinstance(e, dict) and isinstance(e.get("id"), str)]
    report = Report(checked=len(events))
    if not events:
        return report
    ids = [e["id"] for e in events]
    have: set[str] = set()
    for start in range(0, len(ids), 500):
        have |= set(session.scalars(select(InboxEvent.event_id).where(
            InboxEvent.source == InboxSource.STRIPE, InboxEvent.event_id.in_(ids[start:start + 500]))))
    for event in sorted(events, key=lambda e: e.get("created") or 0):  # oldest first, as Stripe sent them
        if event["id"] in have:
            continue
        try:
            body, _, subject = parse_stripe_event(event)
        except InvalidEvent as exc:
            log.warning("reconcile: Stripe event %s cannot be stored: %s", event["id"], exc)
            report.invalid.append(event["id"])
            continue
        stored = store_event(session=session, source=InboxSource.STRIPE, event_id=body["id"], type=body["type"],
                             payload=body, subject=subject, occurred_at=None)
        if stored.duplicate:
            continue  # delivered meanwhile: the webhook's row stands
        report.recovered.append((body["id"], body["type"]))
        report.inbox_ids.append(stored.id)
    return report
