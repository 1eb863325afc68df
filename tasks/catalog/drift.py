"""Drift: a product or price changed in Stripe (dashboard edits) away from what we published.

`product.updated` / `price.updated` carry the object's new state; it is compared field by field with
what our succeeded `stripe_publication` calls left there, and each difference is one open
`stripe_drift` row (shown on the admin course view). A later event that shows the field back in line
resolves it. The same state seen twice records nothing twice.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus, PublicationStatus
from db.models import CourseProgram, CreditPackage, InboxEvent, StripeDrift, StripePublication
from db.types import utcnow
from tasks.catalog import services as catalog
from tasks.catalog import publishing
from tasks.errors import Ignored, WaitFor


def _rows_about(session: Session, object_id: str) -> list[StripePublication]:
    """Every publication row of the listing that made or changed this object."""
    owner = session.scalar(select(StripePublication).where(or_(
        StripePublication.stripe_id == object_id,
        StripePublication.request["target"].as_string() == object_id)).limit(1))
    if owner is None:
        return []
    column, value = ((StripePublication.program_id, owner.program_id) if owner.program_id is not None
                     else (StripePublication.package_id, owner.package_id))
    return list(session.scalars(select(StripePublication).where(column == value).order_by(StripePublication.id)))


def _pending_for_listing_of(session: Session, obj: dict[str, Any]) -> bool:
    """An object we do not know yet, whose metadata names a listing with a call in flight."""
    metadata = obj.get("metadata") or {}
    if metadata.get("kind") == publishing.COURSE and metadata.get("course_code"):
        listing = catalog.live_program(session, metadata["course_code"])
        column = StripePublication.program_id
    elif metadata.get("kind") == publishing.PACKAGE and metadata.get("package_code"):
        listing = catalog.live_package(session, metadata["package_code"])
        column = StripePublication.package_id
    else:
        return False
    return listing is not None and session.scalar(select(StripePublication.id).where(
        column == listing.id, StripePublication.status == PublicationStatus.PENDING).limit(1)) is not None


def expected_fields(rows: list[StripePublication], obj: dict[str, Any]) -> dict[str, Any]:
    """Field → value we expect on this object (metadata keys as `metadata.<key>`)."""
    object_id = obj["id"]
    if obj.get("object") == "product":
        state = publishing.published_product(rows, object_id)
        if state is None:
            return {}
        fields = {"name": state["name"], "description": state["description"], "active": True}
    else:
        price = publishing.published_prices(rows).get(object_id)
        if price is None:
            return {}
        state = price
        fields = {"unit_amount": price["unit_amount"], "currency": price["currency"], "product": price["product"],
                  "active": price["active"]}
    for key, value in (state.get("metadata") or {}).items():
        fields[f"metadata.{key}"] = value
    return fields


def _actual(obj: dict[str, Any], field: str) -> Any:
    if field.startswith("metadata."):
        return (obj.get("metadata") or {}).get(field.removeprefix("metadata."))
    value = obj.get(field)
    if field == "product" and isinstance(value, dict):
        return value.get("id")
    if field == "description":
        return value or None
    return value


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_object(*, session: Session, obj: dict[str, Any], event_id: str | None = None) -> list[StripeDrift]:
    """Compare one product or price with what we published; record new drift, resolve drift that is gone.
    Returns the drift rows recorded now (empty when nothing new)."""
    object_id = obj.get("id")
    if not object_id or obj.get("object") not in ("product", "price"):
        raise Ignored("not a product or price")
    rows = _rows_about(session, object_id)
    if any(r.status is PublicationStatus.PENDING and r.request.get("target") == object_id for r in rows):
        # our own change to this object is in flight: its outcome (which wakes this key) says what to expect
        raise WaitFor(f"stripe:{object_id}", f"a publishing call about {object_id} is in flight")
    expected = expected_fields(rows, obj)
    if not expected:
        if _pending_for_listing_of(session, obj):
            raise WaitFor(f"stripe:{object_id}", f"{object_id} may be the answer to a call in flight")
        raise Ignored(f"{object_id} was not published by coursepipe")
    if _listing_deleted(session, rows[0]):
        expected.pop("active", None)  # a deleted listing's product may be archived (the guide says so) or not

    now = utcnow()
    open_drift = {d.field: d for d in session.scalars(select(StripeDrift).where(
        StripeDrift.stripe_object_id == object_id, StripeDrift.resolved_at.is_(None)))}
    recorded = []
    for field, want in expected.items():
        want_text, have_text = _text(want), _text(_actual(obj, field))
        current = open_drift.get(field)
        if want_text == have_text:
            if current is not None:
                current.resolved_at = now  # back in line
            continue
        if current is not None and current.expected == want_text and current.actual == have_text:
            continue  # already on record
        if current is not None:
            current.resolved_at = now  # superseded by the newer difference
        drift = StripeDrift(stripe_object_id=object_id, field=field, expected=want_text, actual=have_text,
                            event_id=event_id, detected_at=now)
        session.add(drift)
        recorded.append(drift)
    session.flush()
    if recorded:
        _alert_admins(session, rows[0], obj, recorded, event_id)
    return recorded


def _listing_deleted(session: Session, row: StripePublication) -> bool:
    listing = (session.get(CourseProgram, row.program_id) if row.program_id is not None
               else session.get(CreditPackage, row.package_id))
    return listing is not None and listing.deleted_at is not None


def check_answer(*, session: Session, obj: dict[str, Any]) -> list[StripeDrift]:
    """Compare the object a publishing call answered with what it published: Stripe sends no event when the
    call changed nothing there (the admin brought the listing in line with a dashboard edit), so drift that
    call settled is resolved here. Nothing to compare is no error."""
    try:
        return check_object(session=session, obj=obj)
    except (Ignored, WaitFor):
        return []


def _alert_admins(session: Session, row: StripePublication, obj: dict[str, Any], recorded: list[StripeDrift],
                  event_id: str | None) -> None:
    """One mail per check that found something new (the outbox dedupes a re-run of the same check)."""
    from tasks.messaging.outbox import ADMINS, add_mail

    if row.program_id is not None:
        kind, code = publishing.COURSE, session.get(CourseProgram, row.program_id).code
    else:
        kind, code = publishing.PACKAGE, session.get(CreditPackage, row.package_id).code
    add_mail(session=session, template="stripe_drift_alert", recipient=ADMINS,
             context={"listing_kind": kind, "listing_code": code, "stripe_object_id": obj["id"],
                      "object_type": obj.get("object"), "event_id": event_id,
                      "differences": [{"field": d.field, "expected": d.expected, "actual": d.actual}
                                      for d in recorded]},
             dedupe_key=f"stripe_drift:{obj['id']}:{recorded[0].id}")


def newer_event_checked(session: Session, event: InboxEvent) -> InboxEvent | None:
    """A processed event about the same object created after this one (Stripe's `created`, stored as
    `occurred_at`): this one is stale and must not overwrite what the newer one showed."""
    if event.occurred_at is None:
        return None  # no time to compare (never the case for a verified Stripe event)
    return session.scalar(select(InboxEvent).where(
        InboxEvent.source == InboxSource.STRIPE, InboxEvent.subject == event.subject, InboxEvent.id != event.id,
        InboxEvent.status == InboxStatus.PROCESSED, InboxEvent.occurred_at > event.occurred_at).limit(1))


def open_drift(session: Session, limit: int = 100, before: int | None = None) -> list[StripeDrift]:
    """The differences not resolved yet, newest first; `before`: only those with a smaller id (the next page)."""
    query = select(StripeDrift).where(StripeDrift.resolved_at.is_(None))
    if before is not None:
        query = query.where(StripeDrift.id < before)
    return list(session.scalars(query.order_by(StripeDrift.id.desc()).limit(limit)))
