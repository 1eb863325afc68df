"""Is the catalog in sync with Stripe: what each published listing's Stripe product and price should hold.

`expected_objects` (reads only) lists, per listing with a Stripe product, the product and its current
price with the fields our publishing calls set (`tasks.catalog.drift.expected_fields`), and which
listings have unpublished changes; the caller fetches the objects from Stripe outside any transaction
and `differences` compares each one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from tasks.catalog import drift, publishing
from tasks.catalog import services as catalog


@dataclass(frozen=True)
class Expected:
    kind: str
    code: str
    object_type: str  # product | price
    object_id: str
    fields: dict[str, Any]


def expected_objects(session: Session, mode: str | None = None) -> tuple[list[Expected], list[str]]:
    """(the Stripe objects to compare, the listings whose local changes are not published yet in `mode`, the
    key's)."""
    expected, unpublished = [], []
    listings = [(publishing.COURSE, p) for p in catalog.live_programs(session)] + \
               [(publishing.PACKAGE, p) for p in catalog.live_packages(session)]
    for kind, row in listings:
        if not row.stripe_product_id:
            continue  # never published
        state = publishing.stripe_state(session, kind, row, mode)
        if not state["in_sync"]:
            unpublished.append(f"{kind} {row.code}")
        rows = publishing._rows(session, publishing._listing_of(session, kind, row))
        for object_type, object_id in (("product", row.stripe_product_id), ("price", row.stripe_price_id)):
            if object_id:
                fields = drift.expected_fields(rows, {"id": object_id, "object": object_type})
                expected.append(Expected(kind, row.code, object_type, object_id, fields))
    return expected, unpublished


def differences(expected: Expected, obj: dict[str, Any] | None) -> list[str]:
    """What Stripe's object says unlike what we published (empty: in sync)."""
    if obj is None:
        return [f"{expected.object_type} {expected.object_id} does not exist in Stripe"]
    found = []
    for field, want in expected.fields.items():
        have = drift._actual(obj, field)
        if drift._text(want) != drift._text(have):
            found.append(f"{expected.object_type} {expected.object_id} {field}: Stripe has {have!r}, we published "
                         f"{want!r}")
    return found
