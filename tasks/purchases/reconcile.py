"""Reconciliation: find paid Checkout Sessions whose webhook never arrived, and fulfil them the normal way.

Two steps, so no Stripe call runs inside a transaction:
1. `completed_sessions` asks Stripe (the real client, `STRIPE_API_BASE` honoured) for recently
   completed sessions (`created[gte]`, `status=complete`, every page) that are paid.
2. `record_missing` (one unit of work) keeps those with neither an enrollment nor a package purchase
   and no `checkout.session.completed` still in flight in the inbox, and stores for each a synthetic
   inbox event — source `stripe`, event id `reconcile:<cs id>`, shaped like a Stripe event envelope
   with `data.object` = the session — so the normal checkout handler fulfils it. The inbox's unique
   (source, event id) makes a second run a no-op.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus
from db.models import InboxEvent, PackagePurchase, StudentCourseEnrollment
from db.types import utcnow
from tasks.events import stripe_subject
from tasks.stripe_api import stripe_client
from tasks.inbox.store import store_event

log = logging.getLogger("coursepipe.reconcile")

DEFAULT_LOOKBACK = timedelta(hours=72)
PAGE_SIZE = 100
PAID = ("paid", "no_payment_required")
EVENT_TYPE = "checkout.session.completed"
EVENT_PREFIX = "reconcile:"
IN_FLIGHT = (InboxStatus.PENDING, InboxStatus.PROCESSING, InboxStatus.WAITING)


@dataclass
class Report:
    checked: int = 0
    missing: list[str] = field(default_factory=list)  # session ids newly handed to the inbox
    inbox_ids: list[int] = field(default_factory=list)  # to enqueue after commit


def lookback(hours: int | None) -> timedelta:
    return DEFAULT_LOOKBACK if hours is None else timedelta(hours=hours)


def completed_sessions(*, settings, lookback: timedelta = DEFAULT_LOOKBACK, now: datetime | None = None,
                       client=None) -> list[dict[str, Any]]:
    """Paid, completed Checkout Sessions created since `now - lookback`, as plain dicts (network call)."""
    now = now or utcnow()
    client = client or stripe_client(settings, purpose="reconciliation needs it")
    since = int((now - lookback).timestamp())
    page = client.v1.checkout.sessions.list(
        params={"created": {"gte": since}, "status": "complete", "limit": PAGE_SIZE}
    )
    sessions = []
    for checkout_session in page.auto_paging_iter():
        data = checkout_session.to_dict(for_json=True)  # Decimal fields back to their wire strings
        if data.get("payment_status") in PAID:
            sessions.append(data)
    return sessions


def _fulfilled(session: Session, session_ids: list[str]) -> set[str]:
    found = set(session.scalars(select(StudentCourseEnrollment.stripe_checkout_session_id)
                                .where(StudentCourseEnrollment.stripe_checkout_session_id.in_(session_ids))))
    found |= set(session.scalars(select(PackagePurchase.stripe_checkout_session_id)
                                 .where(PackagePurchase.stripe_checkout_session_id.in_(session_ids))))
    return found


def _in_flight(session: Session, checkout_session: dict[str, Any]) -> bool:
    """A completion for this session is already stored and not yet finished: let it run."""
    subject = stripe_subject(EVENT_TYPE, checkout_session)
    return session.scalar(
        select(InboxEvent.id).where(
            InboxEvent.source == InboxSource.STRIPE,
            InboxEvent.type.in_((EVENT_TYPE, "checkout.session.async_payment_succeeded")),
            InboxEvent.subject == subject,
            InboxEvent.status.in_(IN_FLIGHT),
        ).limit(1)
    ) is not None


def synthetic_event(checkout_session: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A Stripe event envelope around the session, as the webhook would have delivered it."""
    now = now or utcnow()
    return {
        "id": f"{EVENT_PREFIX}{checkout_session['id']}",
        "object": "event",
        "api_version": None,
        "created": int(now.timestamp()),
        "livemode": bool(checkout_session.get("livemode", False)),
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": EVENT_TYPE,
        "data": {"object": checkout_session},
        "coursepipe": {"reconciled": True},
    }


def record_missing(*, session: Session, checkout_sessions: Iterable[dict[str, Any]],
                   now: datetime | None = None) -> Report:
    """Store a synthetic completion for each paid session without a fulfilment."""
    now = now or utcnow()
    sessions = [cs for cs in checkout_sessions if cs.get("id") and cs.get("payment_status") in PAID]
    report = Report(checked=len(sessions))
    if not sessions:
        return report
    fulfilled = _fulfilled(session, [cs["id"] for cs in sessions])
    for cs in sessions:
        if cs["id"] in fulfilled or _in_flight(session, cs):
            continue
        created = cs.get("created")
        stored = store_event(
            session=session,
            source=InboxSource.STRIPE,
            event_id=f"{EVENT_PREFIX}{cs['id']}",
            type=EVENT_TYPE,
            payload=synthetic_event(cs, now),
            subject=stripe_subject(EVENT_TYPE, cs),
            occurred_at=datetime.fromtimestamp(created, timezone.utc) if isinstance(created, int) else now,
        )
        if stored.duplicate:
            continue  # handed over by an earlier run; its outcome is on that inbox row
        report.missing.append(cs["id"])
        report.inbox_ids.append(stored.id)
    return report
