"""Selling through Stripe Checkout: what can be bought, the Checkout Session for one purchase, and the
state of a session when the buyer comes back from it.

A session names its buyer and product the way the Stripe webhook expects (`client_reference_id`,
`metadata.kind`, `metadata.course_code` / `metadata.package_code`), so the webhook fulfils it; its
`metadata.coursepipe_course_id` / `metadata.coursepipe_package_id` (the row's id) bind the payment to the
course or package it was sold as, even if that one is deleted and its code used again before the buyer pays.
When the buyer lands on the success page first, `return_event` turns the session Stripe reports (complete and
paid) into the same `checkout.session.completed` inbox event, run by the same code as the webhook's; the
purchase row is unique per session, so whichever arrives second finds it and adds nothing.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.enums import EnrollmentStatus as E
from db.enums import LedgerEntryType, ProgramStatus, PurchaseStatus
from db.models import (
    CheckoutKey,
    CourseProgram,
    CreditLedgerEntry,
    CreditPackage,
    PackagePurchase,
    Student,
    StudentCourseEnrollment,
)
from db.types import new_public_id, utcnow
from tasks.catalog import publishing
from tasks.catalog import services as catalog
from tasks.enrollments.services import AlreadyEnrolled
from tasks.errors import KeyReused, NotFound, ValidationFailed
from tasks.purchases.fulfilment import ASYNC_SUCCEEDED, COMPLETED
from tasks.ledger.causes import Cause

COURSE, PACKAGE = "course", "package"
HELD = (E.ACTIVE, E.PENDING, E.SUSPENDED)  # a student with one of these cannot buy the course again
RETURN_EVENT_PREFIX = "checkout_return:"
# no white space and no control character anywhere (C0 and DEL): Stripe would refuse them as a 502, not a 400
_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f/$.?#][^\s\x00-\x1f\x7f]*$", re.IGNORECASE)


@dataclass(frozen=True)
class CheckoutRequest:
    student_id: str
    kind: str
    code: str
    success_url: str
    cancel_url: str


def parse_checkout_request(body: Any) -> CheckoutRequest:
    if not isinstance(body, dict):
        raise ValidationFailed("body must be a JSON object")
    student_id = body.get("student_id")
    if not isinstance(student_id, str) or not 1 <= len(student_id.strip()) <= 64:
        raise ValidationFailed("student_id: a string of 1 to 64 characters is required", "student_id")
    codes = {k: body.get(f"{k}_code") for k in (COURSE, PACKAGE) if body.get(f"{k}_code") is not None}
    if len(codes) != 1:
        raise ValidationFailed("exactly one of course_code and package_code is required", "course_code")
    (kind, code), = codes.items()
    if not isinstance(code, str) or not code:
        raise ValidationFailed(f"{kind}_code: a non-empty string is required", f"{kind}_code")
    for name in ("success_url", "cancel_url"):
        value = body.get(name)
        if not isinstance(value, str) or len(value) > 2048 or not _URL.fullmatch(value):
            raise ValidationFailed(f"{name}: an http(s) URL is required", name)
    return CheckoutRequest(student_id.strip(), kind, code, body["success_url"], body["cancel_url"])


def price_view(session: Session, listing: CourseProgram | CreditPackage) -> dict[str, Any]:
    """The price a checkout charges: that of the listing's Stripe price. An edit of the price not published yet
    shows only once it is (the storefront never shows one amount and charges another); a price linked by hand
    in Stripe is shown as the listing says."""
    return price_views(session, [listing])[0]


def price_views(session: Session, listings: list) -> list[dict[str, Any]]:
    charged = publishing.charged_prices(session, [row.stripe_price_id for row in listings if row.stripe_price_id])
    views = []
    for row in listings:
        amount, currency = charged.get(row.stripe_price_id, (row.price_amount, row.price_currency))
        views.append({"amount": amount, "currency": currency, "stripe_price_id": row.stripe_price_id})
    return views


def published_packages(session: Session, mode: str | None = None) -> list[CreditPackage]:
    """Packages on sale: not deleted, with a Stripe price to sell them with in Stripe's `mode` (the key's)."""
    priced = [p for p in catalog.live_packages(session) if p.stripe_price_id]
    elsewhere = publishing.made_elsewhere(session, [p.stripe_price_id for p in priced], mode)
    return [p for p in priced if p.stripe_price_id not in elsewhere]


def package_listing(session: Session, package: CreditPackage, price: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": package.code, "title": package.title,
            "price": price or price_view(session, package),
            "credits": [{"kind": package.credit_type.value, "quantity": package.quantity}],
            "validity_days": package.validity_days}


def sellable_package(session: Session, code: str, mode: str | None = None) -> CreditPackage:
    package = catalog.live_package(session, code)
    if package is None or not package.stripe_price_id:
        raise NotFound(f"package {code!r} is not on sale")
    _priced_in(session, package, f"package {code!r}", mode)
    return package


def sellable_course(session: Session, code: str, mode: str | None = None) -> CourseProgram:
    program = catalog.live_program(session, code)
    if program is None or program.status is not ProgramStatus.PUBLISHED or not program.stripe_price_id:
        raise NotFound(f"course {code!r} is not published")
    _priced_in(session, program, f"course {code!r}", mode)
    return program


def _priced_in(session: Session, listing, name: str, mode: str | None) -> None:
    """Refuse (NotFound) a listing whose price was made in Stripe's other mode: a checkout would name a price
    this key's Stripe does not have."""
    if publishing.made_elsewhere(session, [listing.stripe_price_id], mode):
        raise NotFound(f"{name} is not on sale in Stripe's {mode} mode (its price was made in the other mode): "
                       "publish it again")


def checkout_params(*, session: Session, request: CheckoutRequest, mode: str | None = None) -> dict[str, Any]:
    """The Checkout Session to create, after the checks: on sale in Stripe's `mode` (NotFound), not already held
    (AlreadyEnrolled)."""
    if request.kind == COURSE:
        product = sellable_course(session, request.code, mode)
        held = session.scalar(select(StudentCourseEnrollment.id).where(
            StudentCourseEnrollment.student_id == request.student_id,
            StudentCourseEnrollment.program_id == product.id, StudentCourseEnrollment.status.in_(HELD)).limit(1))
        if held is not None:
            raise AlreadyEnrolled(f"student {request.student_id!r} already holds course {request.code!r} "
                                  f"(enrollment {held})")
    else:
        product = sellable_package(session, request.code, mode)
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [{"price": product.stripe_price_id, "quantity": 1}],
        "client_reference_id": request.student_id,
        # the row's id too: a code can be used again after a delete, and this payment buys this row; and the
        # price charged, which the enrollment records even if the studio changes the price before the buyer pays
        "metadata": {"kind": request.kind, f"{request.kind}_code": request.code,
                     f"coursepipe_{request.kind}_id": str(product.id),
                     "coursepipe_price_id": product.stripe_price_id,
                     "student_id": request.student_id},
        "success_url": request.success_url,
        "cancel_url": request.cancel_url,
    }
    student = session.get(Student, request.student_id)
    if student is not None and student.email:
        params["customer_email"] = student.email
    return params


KEY_HOURS = 24  # how long a caller's key stays bound to its request: as long as Stripe keeps its own keys


def bind_key(session: Session, client_key: str, request: CheckoutRequest) -> CheckoutKey:
    """Bind a caller's Idempotency-Key to its request for KEY_HOURS: the same key with another request raises
    KeyReused (before, it silently made another session). A repeat of the same request passes. Returns the
    key's row (locked), holding the Stripe request its first use built, if any."""
    digest = hashlib.sha256(json.dumps(asdict(request), sort_keys=True).encode()).hexdigest()
    now = utcnow()
    row = session.get(CheckoutKey, client_key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                row = CheckoutKey(request_key=client_key, request_digest=digest, created_at=now)
                session.add(row)
            return row
        except IntegrityError:  # the same key bound by a concurrent request: judged against it
            row = session.get(CheckoutKey, client_key, with_for_update=True, populate_existing=True)
    if row.created_at <= now - timedelta(hours=KEY_HOURS):
        # expired (not pruned yet): bound anew, and so is the Stripe key, which Stripe has forgotten too
        row.request_digest, row.created_at, row.stripe_request, row.stripe_key_round = digest, now, None, 0
    elif row.request_digest != digest:
        raise KeyReused(f"Idempotency-Key {client_key!r} was used for another checkout request in the last "
                        f"{KEY_HOURS} hours: a new request needs a new key")
    return row


def keyed_checkout_params(session: Session, client_key: str, request: CheckoutRequest,
                          mode: str | None = None) -> tuple[dict[str, Any], int]:
    """The Stripe request for a checkout sent with an Idempotency-Key, and the round of its Stripe key: built on
    the key's first use and kept with it; a repeat sends that one again, whatever changed since (the buyer's e-mail
    arrived, the price changed), so the key sent to Stripe is the same and Stripe answers with the same session."""
    row = bind_key(session, client_key, request)
    if row.stripe_request is None:
        row.stripe_request = checkout_params(session=session, request=request, mode=mode)
    return row.stripe_request, row.stripe_key_round


def next_round(session: Session, client_key: str, used: int) -> int:
    """The round after `used` of the Idempotency-Key's Stripe key: Stripe keeps a 5xx it saved under a key and
    answers it to every retry with that key for 24 hours, so the call is made again under a fresh one. A round a
    concurrent retry raised already is taken as it is. (A checkout session the failed call may have made anyway is
    left open, unused, and expires.)"""
    row = session.get(CheckoutKey, client_key, with_for_update=True)
    if row is None:  # pruned meanwhile: the next request binds it anew, at round 0
        return used + 1
    if row.stripe_key_round == used:
        row.stripe_key_round = used + 1
    return row.stripe_key_round


def prune_keys(session: Session, *, now=None) -> int:
    """Forget the keys bound more than KEY_HOURS ago (the retention job)."""
    cutoff = (now or utcnow()) - timedelta(hours=KEY_HOURS)
    return session.execute(delete(CheckoutKey).where(CheckoutKey.created_at < cutoff)).rowcount or 0


def idempotency_key(params: dict[str, Any], client_key: str | None, round_: int = 0) -> str:
    """A caller's Idempotency-Key repeats the same session for the same request (a retried POST); the
    key sent to Stripe is a digest of it with the request (and its round, after the first: `next_round`), so it
    never collides with another request or installation. Without one, every request is new."""
    if not client_key:
        return f"coursepipe:checkout:{new_public_id()}"
    named = [client_key, params] + ([round_] if round_ else [])
    digest = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()
    return f"coursepipe:checkout:{digest}"


def create_checkout_session(params: dict[str, Any], *, client: Any, key: str) -> dict[str, Any]:
    """The Stripe call (no database session). Raises the `stripe` library's errors."""
    created = client.v1.checkout.sessions.create(params=params, options={"idempotency_key": key})
    return {"id": created.id, "url": created.url}


# --------------------------------------------------------------------------- the buyer comes back


def fulfilled(session: Session, checkout_session_id: str) -> dict[str, Any]:
    """What the session has produced so far: the enrollment and the credits granted (None when nothing)."""
    enrollment = session.scalar(select(StudentCourseEnrollment).where(
        StudentCourseEnrollment.stripe_checkout_session_id == checkout_session_id))
    purchase = session.scalar(select(PackagePurchase).where(
        PackagePurchase.stripe_checkout_session_id == checkout_session_id))
    view: dict[str, Any] = {"enrollment": None, "credits_granted": None}
    owner = None
    if enrollment is not None:
        program = session.get(CourseProgram, enrollment.program_id)
        view["enrollment"] = {"id": enrollment.id, "student_id": enrollment.student_id,
                              "course_code": program.code if program else None, "status": enrollment.status.value}
        # the purchase's own grants (through its owner's index): not the lots a reinstatement gave back
        owner = (CreditLedgerEntry.enrollment_id == enrollment.id, CreditLedgerEntry.cause == str(Cause.bundle(enrollment.id)))
    elif purchase is not None:
        owner = (CreditLedgerEntry.package_purchase_id == purchase.id,
                 CreditLedgerEntry.cause == str(Cause.package(purchase.id)))
    if owner is not None:
        grants = session.execute(select(CreditLedgerEntry.credit_type, func.sum(CreditLedgerEntry.quantity))
                                 .where(*owner, CreditLedgerEntry.entry_type == LedgerEntryType.GRANT)
                                 .group_by(CreditLedgerEntry.credit_type)).all()
        if grants:  # a package whose payment is pending (or failed) has granted nothing yet: null, as a course's
            view["credits_granted"] = {t.value: int(q) for t, q in sorted(grants, key=lambda g: g[0].value)}
    view["fulfilled"] = enrollment is not None or purchase is not None
    # recorded while its payment was pending (a bank debit): Stripe may say paid before its webhook came
    view["pending"] = (enrollment is not None and enrollment.status == E.PENDING) or \
        (purchase is not None and purchase.status == PurchaseStatus.PENDING)
    return view


def needs_fulfilment(checkout: dict[str, Any], state: dict[str, Any]) -> bool:
    """Stripe says the session is paid, and we have not fulfilled it: nothing recorded, or a purchase recorded
    pending whose payment has settled since."""
    return checkout.get("status") == "complete" and checkout.get("payment_status") == "paid" \
        and (not state["fulfilled"] or state["pending"])


def return_event(checkout: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The event the buyer's return stands for (the session as Stripe reported it): `checkout.session.completed`,
    or `checkout.session.async_payment_succeeded` for a purchase recorded pending. Its id is fixed per session and
    type, so repeated returns store it once."""
    settled = state["fulfilled"] and state["pending"]
    type_, suffix = (ASYNC_SUCCEEDED, ":settled") if settled else (COMPLETED, "")
    return {"id": f"{RETURN_EVENT_PREFIX}{checkout['id']}{suffix}", "object": "event", "type": type_,
            "created": int(utcnow().timestamp()), "livemode": bool(checkout.get("livemode")),
            "data": {"object": checkout}}
