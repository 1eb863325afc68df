"""Publishing courses (and credit packages) to Stripe as a product and a price.

Intent → call → outcome, each step in its own unit of work, never a Stripe call inside a transaction:

1. `next_intent` (one transaction, the listing row locked) compares what the listing should look like
   in Stripe with what our `stripe_publication` rows say Stripe holds, and records ONE pending row for
   the next call (create product, update product, create price, update price metadata, archive an old
   price) with an Idempotency-Key `coursepipe:<kind>:<listing id>:<seq>:<object>-<action>:<random>`, stored
   on the row (the random part keeps two installations sharing a Stripe account from colliding).
   A pending row left by an interrupted run is returned again, with its key: the retried call gets
   Stripe's saved answer instead of a second object.
2. `call_stripe` makes that call (no session).
3. `record_outcome` (one transaction) stores the id on the row and the listing, or the error.

`publish` runs the loop until nothing is left, then marks the course published. Prices are immutable
in Stripe: a new amount or currency is a new price, and the old one is archived after the switch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import ProgramStatus, PublicationStatus
from db.models import CourseProgram, CreditPackage, StripeDrift, StripePublication
from db.types import new_public_id, utcnow
from tasks.catalog import services as catalog
from tasks.errors import PermanentError, TransientError, ValidationFailed
from tasks.inbox.parking import wake_waiting
from tasks.stripe_api import key_mode, outcome_unknown, saved_server_error

log = logging.getLogger("coursepipe.publishing")

COURSE, PACKAGE = "course", "package"
KINDS = (COURSE, PACKAGE)
PRODUCT, PRICE = "product", "price"
CREATE, UPDATE, ARCHIVE = "create", "update", "archive"
MAX_CALLS_PER_PUBLISH = 8  # product create/update, price create/update, a few archives
# a call left pending this long, untouched, belongs to a publish that stopped (its worker lost with its message,
# its retries spent): the publishing job sends the publish again (`stalled`)
STALLED_AFTER = timedelta(minutes=10)
# Stripe keeps an idempotency key 24 hours: a call recorded longer ago than this is not made again by the job (made
# before, it could be made twice); the admin checks the Stripe dashboard, then publishes
REPLAY_WITHIN = timedelta(hours=23)


class PublishFailed(PermanentError):
    """Raised when Stripe refused a publishing call (bad request, auth); the listing keeps its state."""


class PublishRetry(TransientError):
    """Raised when a publishing call may succeed later (Stripe down, rate limited); the intent stays pending."""


# --------------------------------------------------------------------------- what we sell


@dataclass
class Listing:
    """A course program or a credit package, as Stripe should show it."""

    kind: str
    row: CourseProgram | CreditPackage
    summary: str  # bundle (course) or credits (package), e.g. "private_credit:2,group_credit:1"

    @property
    def code(self) -> str:
        return self.row.code

    def metadata(self) -> dict[str, str]:
        if self.kind == COURSE:
            return {"kind": COURSE, "course_code": self.code, "bundle": self.summary}
        return {"kind": PACKAGE, "package_code": self.code, "credits": self.summary}

    def product_state(self) -> dict[str, Any]:
        description = getattr(self.row, "description", None) or None
        return {"name": self.row.title, "description": description, "metadata": self.metadata()}

    def price_state(self) -> dict[str, Any]:
        return {"product": self.row.stripe_product_id, "currency": self.row.price_currency,
                "unit_amount": self.row.price_amount, "metadata": self.metadata()}


def _listing(session: Session, kind: str, code: str, *, lock: bool) -> Listing:
    if kind == COURSE:
        return _listing_of(session, COURSE, catalog.get_program(session, code, lock=lock))
    if kind == PACKAGE:
        return _listing_of(session, PACKAGE, catalog.get_package(session, code, lock=lock))
    raise ValidationFailed(f"kind: must be one of {KINDS}", field="kind")


def _listing_of(session: Session, kind: str, row: CourseProgram | CreditPackage) -> Listing:
    if kind == COURSE:
        return Listing(COURSE, row, catalog.bundle_summary(catalog.live_bundle(session, row.id)))
    return Listing(PACKAGE, row, f"{row.credit_type.value}_credit:{row.quantity}")


def _owner(listing: Listing) -> dict[str, int]:
    return {"program_id": listing.row.id} if listing.kind == COURSE else {"package_id": listing.row.id}


def _rows(session: Session, listing: Listing) -> list[StripePublication]:
    column = StripePublication.program_id if listing.kind == COURSE else StripePublication.package_id
    return list(session.scalars(select(StripePublication).where(column == listing.row.id)
                                .order_by(StripePublication.id)))


# --------------------------------------------------------------------------- what Stripe holds


def _action(row: StripePublication) -> str:
    return row.request.get("action", CREATE)


def _target(row: StripePublication) -> str | None:
    return row.request.get("target") if _action(row) != CREATE else row.stripe_id


def published_product(rows: list[StripePublication], product_id: str | None) -> dict[str, Any] | None:
    """The product's name/description/metadata as our succeeded calls left them (None: not made by us)."""
    state = None
    for row in rows:
        if row.object_type == PRODUCT and row.status is PublicationStatus.SUCCEEDED and _target(row) == product_id:
            params = row.request.get("params", {})
            state = {"name": params.get("name"), "description": params.get("description") or None,
                     "metadata": params.get("metadata", {})}
    return state


def published_prices(rows: list[StripePublication]) -> dict[str, dict[str, Any]]:
    """Each price we created: its amount, currency, product, metadata and whether we archived it."""
    prices: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.object_type != PRICE or row.status is not PublicationStatus.SUCCEEDED:
            continue
        params = row.request.get("params", {})
        if _action(row) == CREATE:
            prices[row.stripe_id] = {"product": params.get("product"), "currency": params.get("currency"),
                                     "unit_amount": params.get("unit_amount"),
                                     "metadata": params.get("metadata", {}), "active": True}
        elif _target(row) in prices:
            price = prices[_target(row)]
            if "metadata" in params:
                price["metadata"] = params["metadata"]
            if "active" in params:
                price["active"] = bool(params["active"])
    return prices


def charged_prices(session: Session, price_ids: list[str]) -> dict[str, tuple[int, str]]:
    """(amount, currency) of each of these Stripe prices that coursepipe created: what a checkout with it
    charges, whatever the listing says since (an edit not published yet). A price linked by hand is absent."""
    if not price_ids:
        return {}
    found = {}
    for stripe_id, request in session.execute(select(StripePublication.stripe_id, StripePublication.request).where(
            StripePublication.stripe_id.in_(sorted(set(price_ids))), StripePublication.object_type == PRICE,
            StripePublication.status == PublicationStatus.SUCCEEDED)):
        params = (request or {}).get("params", {})
        if (request or {}).get("action") == CREATE and isinstance(params.get("unit_amount"), int):
            found[stripe_id] = (params["unit_amount"], params.get("currency"))
    return found


# --------------------------------------------------------------------------- planning


@dataclass
class Intent:
    """One recorded call to make: read by `call_stripe`, settled by `record_outcome`."""

    id: int
    kind: str
    code: str
    object_type: str
    action: str
    target: str | None
    params: dict[str, Any]
    idempotency_key: str

    @classmethod
    def of(cls, row: StripePublication, listing: Listing) -> "Intent":
        return cls(id=row.id, kind=listing.kind, code=listing.code, object_type=row.object_type,
                   action=_action(row), target=row.request.get("target"), params=row.request.get("params", {}),
                   idempotency_key=row.idempotency_key)


def _in_mode(rows: list[StripePublication], mode: str | None) -> list[StripePublication]:
    """The calls made in Stripe's `mode` (`live` or `test`, that of the key) and those recorded before a call
    named its mode; every call when no mode is known (no key)."""
    return [r for r in rows if _in_mode_request(r.request, mode)]


def _plan(listing: Listing, rows: list[StripePublication],
          mode: str | None = None) -> tuple[str, str, str | None, dict] | None:
    """The next call that brings Stripe, in `mode`, in line with the listing, or None when it is in line. Objects
    made in the other mode (a studio that published with a test key and now has a live one) do not exist in this
    one: the listing is planned as never published there, and its product and price are made afresh."""
    row = listing.row
    own = _in_mode(rows, mode)
    elsewhere = {r.stripe_id for r in rows if r.stripe_id} - {r.stripe_id for r in own}
    product_id = None if row.stripe_product_id in elsewhere else row.stripe_product_id
    price_id = None if row.stripe_price_id in elsewhere else row.stripe_price_id
    rows = own
    prices = published_prices(rows)
    if price_id and price_id not in prices:
        # linked by hand to a price made in Stripe: do not replace what an admin chose
        raise PublishFailed(f"{listing.kind} {listing.code!r} uses {price_id}, a price not made by "
                            "coursepipe; unlink it (stripe_price_id) before publishing")
    want_product = listing.product_state()
    if product_id is None:
        return PRODUCT, CREATE, None, _product_params(want_product)
    have_product = published_product(rows, product_id)
    if have_product != want_product:
        return PRODUCT, UPDATE, product_id, {
            "name": want_product["name"], "description": want_product["description"] or "",
            "metadata": want_product["metadata"]}

    want_price = listing.price_state()
    current = prices.get(price_id) if price_id else None
    if current is None or any(current[k] != want_price[k] for k in ("product", "currency", "unit_amount")):
        return PRICE, CREATE, None, want_price
    if current["metadata"] != want_price["metadata"]:
        return PRICE, UPDATE, price_id, {"metadata": want_price["metadata"]}
    for other_id, price in prices.items():
        if other_id != price_id and price["active"]:
            return PRICE, ARCHIVE, other_id, {"active": False}
    return None


def _product_params(want: dict[str, Any]) -> dict[str, Any]:
    params = {"name": want["name"], "metadata": want["metadata"]}
    if want["description"]:
        params["description"] = want["description"]
    return params


def next_intent(*, session: Session, kind: str, code: str, mode: str | None = None) -> Intent | None:
    """Record (or find again) the next call to make in Stripe's `mode` (the key's); None when Stripe is in line,
    and then the listing is marked published (courses). A call left pending in the other mode is given up: its
    key belongs to the other mode, and what it would change is not there."""
    listing = _listing(session, kind, code, lock=True)
    rows = _rows(session, listing)
    own = _in_mode(rows, mode)
    for row in rows:
        if row.status is PublicationStatus.PENDING and row not in own:
            row.status = PublicationStatus.FAILED
            row.last_error = f"made for Stripe's {row.request.get('mode')} mode; the key is now {mode}: not made"
        elif row.status is PublicationStatus.PENDING:
            return Intent.of(row, listing)
    planned = _plan(listing, rows, mode)
    if planned is None:
        if kind == COURSE and listing.row.status is not ProgramStatus.PUBLISHED:
            listing.row.status = ProgramStatus.PUBLISHED
            listing.row.published_at = utcnow()
        return None
    object_type, action, target, params = planned
    seq = len(rows) + 1
    row = StripePublication(
        **_owner(listing), object_type=object_type, status=PublicationStatus.PENDING,
        idempotency_key=f"coursepipe:{kind}:{listing.row.id}:{seq}:{object_type}-{action}:{new_public_id()}",
        request={"action": action, "target": target, "params": params, **({"mode": mode} if mode else {})})
    session.add(row)
    session.flush()
    return Intent.of(row, listing)


def stalled(*, session: Session, mode: str | None, now: datetime | None = None,
            older_than: timedelta = STALLED_AFTER) -> list[tuple[str, str]]:
    """(kind, code) of each listing, not deleted, with a call pending in Stripe's `mode` (the key's) and untouched
    for `older_than`. A publish keeps a call pending from its request until Stripe is in line (`next_intent`,
    recorded with the outcome before it), so such a call is one whose publish stopped; a publish sent again
    makes it with its key (Stripe answers a call it had made with what it answered then), while Stripe still
    keeps that key (`REPLAY_WITHIN`)."""
    now = now or utcnow()
    pending = session.execute(select(StripePublication.program_id, StripePublication.package_id,
                                     StripePublication.request)
                              .where(StripePublication.status == PublicationStatus.PENDING,
                                     StripePublication.updated_at <= now - older_than,
                                     StripePublication.created_at > now - REPLAY_WITHIN)
                              .order_by(StripePublication.id)).all()
    program_ids = {p for p, _, request in pending if p is not None and _in_mode_request(request, mode)}
    package_ids = {k for _, k, request in pending if k is not None and _in_mode_request(request, mode)}
    found: list[tuple[str, str]] = []
    if program_ids:
        found += [(COURSE, code) for code in session.scalars(
            select(CourseProgram.code).where(CourseProgram.id.in_(program_ids), CourseProgram.deleted_at.is_(None))
            .order_by(CourseProgram.code))]
    if package_ids:
        found += [(PACKAGE, code) for code in session.scalars(
            select(CreditPackage.code).where(CreditPackage.id.in_(package_ids), CreditPackage.deleted_at.is_(None))
            .order_by(CreditPackage.code))]
    return found


def made_elsewhere(session: Session, price_ids: list[str | None], mode: str | None) -> set[str]:
    """The prices among these that coursepipe made in Stripe's other mode than `mode` (the key's): they do not
    exist in this one (a studio that published with a test key and now has a live one). A price made by hand, or
    before calls named their mode, is taken as this mode's."""
    wanted = sorted({p for p in price_ids if p})
    if mode is None or not wanted:
        return set()
    return {stripe_id for stripe_id, request in session.execute(
        select(StripePublication.stripe_id, StripePublication.request).where(
            StripePublication.stripe_id.in_(wanted), StripePublication.object_type == PRICE,
            StripePublication.status == PublicationStatus.SUCCEEDED))
        if not _in_mode_request(request, mode)}


def _in_mode_request(request: dict[str, Any] | None, mode: str | None) -> bool:
    return mode is None or (request or {}).get("mode", mode) == mode


class PublishingDisabled(PermanentError):
    """Raised when publishing is asked for without STRIPE_API_KEY."""


def require_api_key(settings: Any, kind: str, code: str) -> None:
    if not settings.stripe_api_key:
        raise PublishingDisabled(f"STRIPE_API_KEY is not set: publishing to Stripe is disabled; "
                                 f"the {kind} {code} stays as it is")


def check_publishable(*, session: Session, settings: Any, kind: str, code: str) -> None:
    """Refuse, to the admin, what a worker could not publish: an unknown listing (NotFound, first: a wrong code
    is the caller's to fix whatever the configuration), no STRIPE_API_KEY (PublishingDisabled), or one that
    cannot be published as it is (PublishFailed)."""
    listing = _listing(session, kind, code, lock=False)
    require_api_key(settings, kind, code)
    _plan(listing, _rows(session, listing), key_mode(settings.stripe_api_key))


def published_ids(session: Session, kind: str, code: str) -> tuple[str | None, str | None]:
    """The listing's Stripe product and price ids as they stand."""
    row = _listing(session, kind, code, lock=False).row
    return row.stripe_product_id, row.stripe_price_id


def stripe_state(session: Session, kind: str, row: CourseProgram | CreditPackage,
                 mode: str | None = None) -> dict[str, Any]:
    """What the admin sees: ids, whether Stripe (in `mode`, the key's) is in line with our data, recent calls,
    open drift."""
    listing = _listing_of(session, kind, row)  # the row the caller holds: not looked up again
    rows = _rows(session, listing)
    pending = [r for r in rows if r.status is PublicationStatus.PENDING]
    blocked = None
    try:
        in_sync = not pending and _plan(listing, rows, mode) is None
    except PublishFailed as exc:  # shown, not swallowed: the admin must act before a publish can run
        in_sync, blocked = False, str(exc)
    ids = {row.stripe_product_id, row.stripe_price_id} | {r.stripe_id for r in rows if r.stripe_id}
    ids.discard(None)
    drift = list(session.scalars(select(StripeDrift).where(StripeDrift.stripe_object_id.in_(ids),
                                                           StripeDrift.resolved_at.is_(None))
                                 .order_by(StripeDrift.id))) if ids else []
    return {
        "product_id": row.stripe_product_id,
        "price_id": row.stripe_price_id,
        "in_sync": in_sync,
        "pending": len(pending),
        "last_error": blocked or (pending[0].last_error if pending else (
            rows[-1].last_error if rows and rows[-1].status is PublicationStatus.FAILED else None)),
        "publications": [publication_view(r) for r in rows[-10:]],
        "drift": [drift_view(d) for d in drift],
    }


def publication_view(row: StripePublication) -> dict[str, Any]:
    return {"id": row.id, "object_type": row.object_type, "action": _action(row),
            "target": row.request.get("target"), "status": row.status.value, "stripe_id": row.stripe_id,
            "idempotency_key": row.idempotency_key, "last_error": row.last_error,
            "created_at": row.created_at.isoformat() if row.created_at else None}


def drift_view(row: StripeDrift) -> dict[str, Any]:
    return {"id": row.id, "stripe_object_id": row.stripe_object_id, "field": row.field,
            "expected": row.expected, "actual": row.actual, "event_id": row.event_id,
            "detected_at": row.detected_at.isoformat()}


# --------------------------------------------------------------------------- the call and its outcome


def call_stripe(intent: Intent, *, client: Any) -> Any:
    """Make the recorded call with its Idempotency-Key. Raises the `stripe` library's errors."""
    options = {"idempotency_key": intent.idempotency_key}
    api = client.v1.products if intent.object_type == PRODUCT else client.v1.prices
    if intent.action == CREATE:
        return api.create(params=intent.params, options=options)
    return api.update(intent.target, params=intent.params, options=options)


@dataclass
class PublishOutcome:
    status: PublicationStatus
    stripe_id: str | None
    woken: list[int] = field(default_factory=list)


def record_outcome(*, session: Session, intent: Intent, result: Any = None,
                   error: Exception | None = None) -> PublishOutcome:
    """Store what Stripe answered. Re-recording a settled row changes nothing."""
    row = session.scalar(select(StripePublication).where(StripePublication.id == intent.id).with_for_update())
    if row is None or row.status is not PublicationStatus.PENDING:
        return PublishOutcome(row.status if row else PublicationStatus.FAILED, row.stripe_id if row else None)
    if error is not None:
        row.last_error = f"{type(error).__name__}: {error}"[:2000]
        if saved_server_error(error):  # its key can only replay it: a new publish plans the call with a new key
            row.last_error = (f"Stripe saved this error under the call's idempotency key and replays it for 24 hours; "
                              f"publish again to make the call with a new key ({row.last_error})")[:2000]
        elif outcome_unknown(error):
            return PublishOutcome(PublicationStatus.PENDING, None)  # the same key is replayed on the retry
        row.status = PublicationStatus.FAILED
        keys = {f"stripe:{intent.target}"} if intent.target else set()
        return PublishOutcome(row.status, None, wake_waiting(session=session, keys=keys))
    stripe_id = result["id"]
    row.status, row.stripe_id, row.last_error = PublicationStatus.SUCCEEDED, stripe_id, None
    if intent.action == CREATE:
        listing = _listing_by_id(session, intent.kind, row)
        if intent.object_type == PRODUCT:
            listing.stripe_product_id = stripe_id
        else:
            listing.stripe_price_id = stripe_id
    session.flush()
    # a product.updated / price.updated parked until we knew this object can be checked now
    return PublishOutcome(row.status, stripe_id, wake_waiting(session=session, keys={f"stripe:{stripe_id}"}))


def _listing_by_id(session: Session, kind: str, row: StripePublication) -> CourseProgram | CreditPackage:
    if kind == COURSE:
        return session.get(CourseProgram, row.program_id, with_for_update=True)
    return session.get(CreditPackage, row.package_id, with_for_update=True)


# --------------------------------------------------------------------------- the loop


@dataclass
class Published:
    kind: str
    code: str
    calls: list[dict[str, Any]]
    product_id: str | None
    price_id: str | None
    woken: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "code": self.code, "calls": self.calls, "product_id": self.product_id,
                "price_id": self.price_id}


def listing_for_price(session: Session, price_id: str) -> CourseProgram | CreditPackage | None:
    """The course or package a Stripe price belongs to: its current price, or one we created earlier
    and archived after a price change (a checkout opened before the change still names it)."""
    program = session.scalar(select(CourseProgram).where(CourseProgram.stripe_price_id == price_id))
    if program is not None:
        return program
    package = session.scalar(select(CreditPackage).where(CreditPackage.stripe_price_id == price_id))
    if package is not None:
        return package
    row = session.scalar(select(StripePublication).where(
        StripePublication.object_type == PRICE, StripePublication.stripe_id == price_id,
        StripePublication.status == PublicationStatus.SUCCEEDED))
    if row is None:
        return None
    return session.get(CourseProgram, row.program_id) if row.program_id else session.get(CreditPackage,
                                                                                        row.package_id)
