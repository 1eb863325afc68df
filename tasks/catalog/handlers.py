"""Stripe catalog events: `product.updated` / `price.updated` are checked for drift.

The subject is `stripe:<object id>`, so events about one object run one at a time; an event older
than one already checked is stale and ignored; one about an object whose publishing call is still in
flight waits until its outcome is recorded.
"""
from __future__ import annotations

from db.enums import InboxSource
from db.models import InboxEvent
from tasks.catalog import drift
from tasks.errors import Ignored
from tasks.inbox.context import HandlerContext


def on_catalog_object_updated(ctx: HandlerContext, event: InboxEvent) -> None:
    session = ctx.session
    newer = drift.newer_event_checked(session, event)
    if newer is not None:
        raise Ignored(f"stale: {newer.event_id} about the same object is newer and was checked")
    drift.check_object(session=session, obj=event.payload["data"]["object"], event_id=event.event_id)


HANDLERS = {
    (InboxSource.STRIPE.value, "product.updated"): on_catalog_object_updated,
    (InboxSource.STRIPE.value, "price.updated"): on_catalog_object_updated,
}
