"""Stripe catalog events: `product.updated` / `price.updated` are checked for drift (CONTRACT §3.1).

The subject is `stripe:<object id>`, so events about one object run one at a time; an event older
than one already checked is stale and ignored; one about an object whose publishing call is still in
flight waits until its outcome is recorded.
"""
from __future__ import annotations

from db.enums import InboxSource
from db.models import InboxEvent
from tasks import drift
from tasks.errors import Ignored
from tasks.inbox import handles


@handles(InboxSource.STRIPE, "product.updated", "price.updated")
def on_catalog_object_updated(session, event: InboxEvent) -> None:
    newer = drift.newer_event_checked(session, event)
    if newer is not None:
        raise Ignored(f"stale: {newer.event_id} about the same object is newer and was checked")
    drift.check_object(session=session, obj=event.payload["data"]["object"], event_id=event.event_id)
