"""Fulfilment of Stripe Checkout Sessions: money in → entitlements out, exactly once.

`fulfil_checkout` identifies the buyer (`client_reference_id`) and the product (`metadata.kind`
with `course_code` / `package_code`; without metadata naming one, the session's line-item price ids), then,
in the caller's one transaction:

- a course: the `student_course_enrollment` row (unique per checkout session), one progress row per
  step and the bundle's credits (`tasks.enrollments.services.provision`), `enrollment.created` and the
  welcome mail through the outbox;
- a package: the `package_purchase` row (unique per checkout session) and its credits, through the
  same `tasks.ledger.credits.issue_credits` the bundles use.

An unpaid session (async payment) records a `pending` purchase; `async_payment_succeeded` fulfils
it, `async_payment_failed` marks it `failed`. A paid checkout is fulfilled even if its course was
unpublished (or soft-deleted) since: a session that names the row it sold (`metadata.coursepipe_course_id` /
`coursepipe_package_id`, as `tasks.purchases.selling` creates them) is fulfilled against that row, never
against a course or package created under the same code after a delete (a deleted course's buyer is told to
the admins: `deleted_course_sold_alert`). A buyer we do not know is created from the
session. No buyer or an unknown product raises a permanent error: the event stays `failed`, visible and replayable.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.database import upsert_insert
from db.enums import CreditType, EnrollmentStatus, InboxSource, PurchaseStatus
from db.models import CourseProgram, CreditPackage, InboxEvent, PackagePurchase, Student, StudentCourseEnrollment
from db.types import utcnow
from tasks.catalog import services as catalog
from tasks.ledger import credits
from tasks.ledger.causes import Cause
from tasks.enrollments import services as enrollments
from tasks.purchases import payments
from tasks.catalog import publishing
from tasks.purchases import shapes
from tasks.messaging import outbox
from tasks.errors import NotFound, PermanentError, TransientError
from tasks.events import stripe_subject
from tasks.machines import ENROLLMENT, PACKAGE_PURCHASE
from tasks.stripe_api import mode_mismatch, stripe_client
from tasks.inbox.context import Fetched, HandlerContext, not_fetched
from tasks.inbox.parking import wake_waiting
from tasks.inbox.store import keep_erased_subjects

COMPLETED = "checkout.session.completed"
ASYNC_SUCCEEDED = "checkout.session.async_payment_succeeded"
ASYNC_FAILED = "checkout.session.async_payment_failed"
CHECKOUT_TYPES = (COMPLETED, ASYNC_SUCCEEDED, ASYNC_FAILED)
# fulfilment_metadata: the event whose payment settled after the enrollment was revoked while pending
SETTLED_BY = "payment_settled_by"
PAID_STATUSES = ("paid", "no_payment_required")
NOT_ONE_TIME = ("subscription", "setup")  # checkout modes that are not a course or package purchase
KINDS = ("course", "package")  # metadata.kind of a course or package sale
STRIPE_TIMEOUT_SECONDS = 10

log = logging.getLogger("coursepipe.fulfilment")



class UnknownProduct(NotFound):
    """Raised when a checkout names no course or package we know (fix the catalog, then replay)."""


class SoldNothingOfOurs(UnknownProduct):
    """Raised when a checkout's metadata names no course or package and none of its line items' prices is one of
    ours: another sale of the Stripe account (the event is ignored; an admin's re-fulfilment is refused)."""


class NotFulfillable(PermanentError):
    """Raised when a re-fulfilment is asked for a checkout the event handlers ignore (another Stripe mode's,
    a subscription or setup session)."""


class UnknownBuyer(PermanentError):
    """Raised when a checkout names no student (no client_reference_id, no matching e-mail)."""


@dataclass(frozen=True)
class Product:
    program: CourseProgram | None = None
    package: CreditPackage | None = None
    price_id: str | None = None
    product_id: str | None = None
    identified_by: str = "metadata"


@dataclass
class Fulfilled:
    kind: str  # course | package
    id: int  # enrollment id or package purchase id
    status: str
    created: bool
    provisioned: enrollments.Provisioned | None = None


# --------------------------------------------------------------------------- identifying


def payment_outcome(checkout: dict[str, Any], event_type: str) -> str:
    """`paid`, `pending` (async payment not settled) or `failed`."""
    if event_type == ASYNC_FAILED:
        return "failed"
    if event_type == ASYNC_SUCCEEDED or checkout.get("payment_status") in PAID_STATUSES:
        return "paid"
    return "pending"


def amounts(checkout: dict[str, Any]) -> dict[str, Any]:
    """Stripe's figures of a session: total, subtotal (before discounts and exclusive tax), tax, discount."""
    details = checkout.get("total_details") or {}
    subtotal = checkout.get("amount_subtotal")
    return {"amount_total": checkout.get("amount_total") or 0,
            "amount_subtotal": subtotal if isinstance(subtotal, int) else None,
            "amount_tax": details.get("amount_tax") or 0, "amount_discount": details.get("amount_discount") or 0}


def checkout_email(checkout: dict[str, Any]) -> str | None:
    return (checkout.get("customer_details") or {}).get("email") or checkout.get("customer_email")


def buyer_id(session: Session, checkout: dict[str, Any]) -> str:
    """`client_reference_id`; else `metadata.student_id`; else the one student with the customer's e-mail."""
    student_id = checkout.get("client_reference_id") or (checkout.get("metadata") or {}).get("student_id")
    if student_id:
        return str(student_id)
    email = checkout_email(checkout)
    if email:
        matches = session.scalars(select(Student.id).where(func.lower(Student.email) == email.strip().lower())
                                  .limit(2)).all()
        if len(matches) == 1:
            return matches[0]
    raise UnknownBuyer(f"checkout session {checkout.get('id')} has no client_reference_id and its e-mail "
                       f"({email_reference(email) if email else 'none'}) matches no single known student")


def email_reference(email: str) -> str:
    """How an error names a customer's e-mail (stored as last_error, logged): a short hash of the normalised
    address, which matches the same address elsewhere without spelling it out."""
    return "sha256:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:12]


def ensure_student(session: Session, student_id: str, checkout: dict[str, Any]) -> Student:
    """The buyer's mirror row; a student first seen on a purchase is created (completed by `student.upserted`).

    INSERT … ON CONFLICT DO NOTHING RETURNING: one statement for a new student; a known one (or one
    a concurrent transaction created first) is then read as it is, never overwritten.
    """
    details = checkout.get("customer_details") or {}
    now = utcnow()
    student = session.scalars(
        upsert_insert(session)(Student)
        .values(id=student_id, email=checkout_email(checkout), name=details.get("name"), created_at=now,
                updated_at=now)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Student),
        execution_options={"populate_existing": True},
    ).first()
    if student is None:
        # a known one, under the student's ledger lock (`credits.lock_student`'s, FOR NO KEY UPDATE): an erasure
        # (FOR UPDATE) at the same moment comes wholly before this purchase (its `erased_at` read here) or wholly
        # after it (it finds the enrollment and scrubs it), and so does an admin's enrolment by hand, which checks
        # under that lock that the student holds no enrollment in the course (a key-share lock let it miss this
        # purchase's, not yet committed: two enrollments, the bundle granted twice)
        student = session.scalar(select(Student).where(Student.id == student_id)
                                 .with_for_update(key_share=True)
                                 .execution_options(populate_existing=True))
    if student is None:
        raise TransientError(f"student {student_id} could not be created")
    return student


def _sold_by_code(session: Session, model, code: str):
    """The live course or package with this code; a paid checkout of one deleted since fulfils against its
    last row."""
    return session.scalar(
        select(model).where(model.code == code)
        .order_by(model.deleted_at.is_not(None), model.deleted_at.desc(), model.id.desc())
        .limit(1)
    )


def _sold(session: Session, model, kind: str, metadata: dict[str, Any], checkout_id: str | None):
    """The course or package the checkout sold: the row its `metadata.coursepipe_<kind>_id` names when that row has
    the session's code (deleted since or not: a code used again after a delete is another course, which this
    payment did not buy), else the row with its code (`_sold_by_code`: a session made elsewhere, or by an older
    coursepipe). An id that is malformed or names another row is not ours to trust, and never fails a payment."""
    code = metadata.get(f"{kind}_code")
    row_id = shapes.listing_id(metadata, kind)
    row = session.get(model, row_id) if code and row_id is not None else None
    if row is not None and row.code == code:
        return row
    if metadata.get(f"coursepipe_{kind}_id") is not None:
        log.warning("checkout session %s: metadata.coursepipe_%s_id %r names no %s %r here; matched by its code",
                    checkout_id, kind, metadata.get(f"coursepipe_{kind}_id"), kind, code)
    row = _sold_by_code(session, model, code) if code else None
    if row is None:
        raise UnknownProduct(f"checkout session {checkout_id}: unknown {kind} {code!r}")
    return row


def _price_sold(session: Session, listing, metadata: dict[str, Any], checkout_id: str | None) -> str | None:
    """The price the session charged: its `metadata.coursepipe_price_id` when that is the listing's current price
    or one it had before a price change; else (a session made elsewhere, or a price not the listing's) its
    current one."""
    named = shapes.sold_price(metadata)
    if named is None or named == listing.stripe_price_id:
        return listing.stripe_price_id
    if publishing.listing_for_price(session, named) is listing:
        return named
    log.warning("checkout session %s: metadata.coursepipe_price_id %r is no price of %s %r; its current price is "
                "recorded", checkout_id, named, type(listing).__name__, listing.code)
    return listing.stripe_price_id


def line_item_prices(checkout: dict[str, Any], settings: Any = None, client: Any = None,
                     fetched: Fetched = not_fetched) -> list[tuple[str, str | None]]:
    """(price id, product id) of the session's line items: embedded in the payload, else fetched from Stripe.

    The fetch is the one network call fulfilment makes; it runs outside the transaction
    (`fetched`, the handler context's: the runner's caller fetches, then the handler runs again with the
    answer).
    """
    items = (checkout.get("line_items") or {}).get("data")
    if items is None:
        items = fetched(f"stripe:line_items:{checkout['id']}",
                        lambda: _fetch_line_items(checkout["id"], settings, client))
    prices = []
    for item in items:
        price = item.get("price") or {}
        price_id = price.get("id") if isinstance(price, dict) else price
        product = price.get("product") if isinstance(price, dict) else None
        if isinstance(product, dict):
            product = product.get("id")
        if price_id:
            prices.append((price_id, product))
    return prices


def _fetch_line_items(checkout_session_id: str, settings: Any, client: Any) -> list[dict[str, Any]]:
    import stripe

    client = client or stripe_client(settings, purpose="a checkout without metadata cannot be identified",
                                     timeout=STRIPE_TIMEOUT_SECONDS)
    try:
        page = client.v1.checkout.sessions.line_items.list(checkout_session_id, params={"limit": 100})
        return [item.to_dict() for item in page.auto_paging_iter()]
    except stripe.InvalidRequestError as exc:
        raise PermanentError(f"Stripe has no line items for {checkout_session_id}: {exc.user_message}") from None
    except (stripe.APIConnectionError, stripe.RateLimitError, stripe.APIError) as exc:
        raise TransientError(f"Stripe line items for {checkout_session_id}: {exc}") from None
    except stripe.StripeError as exc:  # authentication, permission: retrying will not help
        raise PermanentError(f"Stripe line items for {checkout_session_id}: {exc}") from None


def names_ours(metadata: dict[str, Any]) -> bool:
    """The metadata names a course or package: `kind` course or package, or a course or package code. A `kind`
    of its own (`membership`, say) without either code is how the account's other sales use the key: not ours."""
    return metadata.get("kind") in KINDS or bool(metadata.get("course_code") or metadata.get("package_code"))


def identify_product(session: Session, checkout: dict[str, Any], *, settings: Any = None,
                     client: Any = None, fetched: Fetched = not_fetched) -> Product:
    metadata = checkout.get("metadata") or {}
    if names_ours(metadata):
        kind = metadata.get("kind") or ("course" if metadata.get("course_code") else "package")
        if kind == "course":
            program = _sold(session, CourseProgram, "course", metadata, checkout.get("id"))
            return Product(program=program, price_id=_price_sold(session, program, metadata, checkout.get("id")),
                           product_id=program.stripe_product_id)
        if kind == "package":
            package = _sold(session, CreditPackage, "package", metadata, checkout.get("id"))
            return Product(package=package, price_id=_price_sold(session, package, metadata, checkout.get("id")),
                           product_id=package.stripe_product_id)
        # a course or package code under a kind of another name: a session of ours made wrong, shown, not dropped
        raise UnknownProduct(f"checkout session {checkout.get('id')}: unknown metadata.kind {kind!r}")
    # no metadata, or metadata of the account's other sales: its line items decide
    prices = line_item_prices(checkout, settings, client, fetched)
    for price_id, product_id in prices:
        # the current price of a course or package, or one we archived after a price change
        listing = publishing.listing_for_price(session, price_id)
        if listing is None:
            continue
        kind = {"program": listing} if isinstance(listing, CourseProgram) else {"package": listing}
        return Product(**kind, price_id=price_id, product_id=product_id or listing.stripe_product_id,
                       identified_by="line_items")
    raise SoldNothingOfOurs(f"checkout session {checkout.get('id')}: metadata names no course or package and no "
                            f"known price among {[p for p, _ in prices]}")


# --------------------------------------------------------------------------- fulfilling


def _lock_or_create(session: Session, model, checkout_session_id: str, make):
    """The purchase row of a checkout session, row-locked; created once (unique session id).

    One INSERT … ON CONFLICT DO NOTHING RETURNING: a new row comes back (locked, as ours); on a
    conflict (a redelivery, or a concurrent fulfilment that committed first) the existing row is
    read under FOR UPDATE.
    """
    created = session.scalars(
        upsert_insert(session)(model).values(**make())
        .on_conflict_do_nothing(index_elements=["stripe_checkout_session_id"])
        .returning(model),
        execution_options={"populate_existing": True},
    ).first()
    if created is not None:
        return created, True
    query = select(model).where(model.stripe_checkout_session_id == checkout_session_id).with_for_update(key_share=True)
    row = session.scalar(query.execution_options(populate_existing=True))
    if row is None:
        raise TransientError(f"purchase of {checkout_session_id} vanished")
    return row, False


def _metadata(checkout: dict[str, Any], event_type: str, event_id: str | None, product: Product,
              outcome: str, *, buyer_erased: bool = False) -> dict[str, Any]:
    """What the enrollment records of its checkout; the e-mail left out for a buyer erased before it was
    applied (a checkout still pending at the erasure, or one redelivered after it)."""
    return {
        "checkout_session_id": checkout.get("id"),
        "event_type": event_type,
        "event_id": event_id,
        "payment_status": checkout.get("payment_status"),
        "outcome": outcome,
        "metadata": checkout.get("metadata") or {},
        "customer": checkout.get("customer"),
        "customer_email": None if buyer_erased else checkout_email(checkout),
        "identified_by": product.identified_by,
        "recorded_at": utcnow().isoformat(),
    }


def fulfil_checkout(*, session: Session, checkout: dict[str, Any], event_type: str = COMPLETED,
                    event_id: str | None = None, settings: Any = None, stripe_client: Any = None,
                    fetched: Fetched = not_fetched) -> Fulfilled:
    """Fulfil (or record) one Checkout Session. Idempotent: a repeat creates nothing new.

    `fetched(key, fetch)` answers remote look-ups made outside the transaction (the handler context's).
    """
    if event_type not in CHECKOUT_TYPES:
        raise ValueError(f"not a checkout event type: {event_type}")
    if not checkout.get("id"):
        raise PermanentError("checkout session without an id")
    shapes.require("checkout session", checkout, shapes.checkout_problem(checkout))
    outcome = payment_outcome(checkout, event_type)
    product = identify_product(session, checkout, settings=settings, client=stripe_client, fetched=fetched)
    student = ensure_student(session, buyer_id(session, checkout), checkout)
    if student.erased_at is not None:  # their payment, as the erasure keeps theirs: forgotten once applied
        keep_erased_subjects(session, student.id, {stripe_subject(event_type, checkout)}, utcnow())
    if product.program is not None:
        return _fulfil_course(session, checkout, event_type, event_id, product, student, outcome)
    return _fulfil_package(session, checkout, event_type, event_id, product, student, outcome)


def _fulfil_course(session: Session, checkout: dict[str, Any], event_type: str, event_id: str | None,
                   product: Product, student: Student, outcome: str) -> Fulfilled:
    program = product.program
    initial = {"paid": EnrollmentStatus.ACTIVE, "pending": EnrollmentStatus.PENDING, "failed": EnrollmentStatus.FAILED}[outcome]
    now = utcnow()

    def make() -> dict[str, Any]:
        metadata = _metadata(checkout, event_type, event_id, product, outcome,
                             buyer_erased=student.erased_at is not None)
        metadata["bundle"] = enrollments.bundle_snapshot(program, session)  # what was sold, kept as sold
        metadata["program_status_at_fulfilment"] = program.status.value
        return dict(
            student_id=student.id,
            program_id=program.id,
            status=initial,
            stripe_checkout_session_id=checkout["id"],
            stripe_payment_intent_id=checkout.get("payment_intent"),
            stripe_product_id=product.product_id,
            stripe_price_id=product.price_id,
            **amounts(checkout),
            currency=checkout.get("currency"),
            fulfilment_metadata=metadata,
            activated_at=now if initial == EnrollmentStatus.ACTIVE else None,
        )

    enrollment, created = _lock_or_create(session, StudentCourseEnrollment, checkout["id"], make)
    cause = f"checkout:{checkout['id']}"
    paid_now = created and initial == EnrollmentStatus.ACTIVE  # this call made the purchase entitled
    if created:
        session.flush()
        ENROLLMENT.begin(enrollment, session=session, cause=cause, enrollment_id=enrollment.id)
    else:
        if enrollment.stripe_payment_intent_id is None and checkout.get("payment_intent"):
            enrollment.stripe_payment_intent_id = checkout["payment_intent"]
        if outcome == "paid" and enrollment.status in (EnrollmentStatus.PENDING, EnrollmentStatus.FAILED):
            ENROLLMENT.move(enrollment, EnrollmentStatus.ACTIVE, session=session, cause=cause, enrollment_id=enrollment.id, at=now)
            enrollment.activated_at = now
            paid_now = True
            enrollment.fulfilment_metadata = {**(enrollment.fulfilment_metadata or {}),
                                              "activated_by": event_type, "activated_event_id": event_id}
        elif outcome == "failed" and enrollment.status == EnrollmentStatus.PENDING:
            ENROLLMENT.move(enrollment, EnrollmentStatus.FAILED, session=session, cause=cause, enrollment_id=enrollment.id, at=now)
        elif outcome == "paid" and enrollment.status == EnrollmentStatus.REVOKED and enrollment.activated_at is None \
                and not (enrollment.fulfilment_metadata or {}).get(SETTLED_BY):
            # revoked while its payment was pending, which has now settled: it stays revoked, but it is a sale
            enrollment.fulfilment_metadata = {**(enrollment.fulfilment_metadata or {}),
                                              SETTLED_BY: event_type, "payment_settled_event_id": event_id}
    provisioned = None
    if enrollment.status in enrollments.ENTITLED:
        steps = catalog.live_steps(session, program.id)
        provisioned = enrollments.provision(session=session, enrollment=enrollment, program=program, cause=cause,
                                            fresh=created, steps=steps)
        enrollments.announce_created(session=session, enrollment=enrollment, program=program, fresh=created,
                                     steps=steps)
    if paid_now and program.deleted_at is not None:  # not a copy of a sale made while the course was live
        _alert_deleted_course_sold(session, enrollment, program, checkout)
    if not created:
        # refunds or disputes recorded against this purchase before now apply (a new row has none:
        # they wait until it exists)
        payments.settle_enrollment(session=session, enrollment=enrollment, cause=cause)
    session.flush()
    return Fulfilled("course", enrollment.id, enrollment.status.value, created, provisioned)


def _alert_deleted_course_sold(session: Session, enrollment: StudentCourseEnrollment, program: CourseProgram,
                               checkout: dict[str, Any]) -> None:
    """A course deleted before its checkout was paid: the buyer holds an enrollment whose steps cannot be booked.
    One mail to the admins (once per enrollment), who refund it or move the student."""
    outbox.add_mail(
        session=session, template="deleted_course_sold_alert", recipient=outbox.ADMINS,
        context={"course_code": program.code, "course_title": program.title, "student_id": enrollment.student_id,
                 "enrollment_id": enrollment.id, "checkout_session_id": checkout.get("id"),
                 "amount": enrollment.amount_total, "currency": enrollment.currency,
                 "deleted_at": program.deleted_at.isoformat()},
        dedupe_key=f"deleted_course_sold_alert:{enrollment.id}", enrollment_id=enrollment.id)


def package_sold(package: CreditPackage) -> dict[str, Any]:
    """What a purchase of `package` sells, recorded on the purchase when it is made (`PackagePurchase.sold`)."""
    return {"credit_type": package.credit_type.value, "quantity": package.quantity,
            "validity_days": package.validity_days}


def grant_package(session: Session, purchase: PackagePurchase, package: CreditPackage) -> tuple[CreditType, int]:
    """The purchase's lot: what it sold (the package as it is for one made before that was recorded), its
    validity counted from now. Returns (kind, quantity)."""
    sold = purchase.sold or package_sold(package)
    credit_type, quantity, days = CreditType(sold["credit_type"]), int(sold["quantity"]), sold.get("validity_days")
    now = utcnow()
    credits.issue_credits(session=session, student_id=purchase.student_id, credit_type=credit_type, quantity=quantity,
                          cause=Cause.package(purchase.id), package_purchase_id=purchase.id,
                          expires_at=now + timedelta(days=days) if days else None)
    return credit_type, quantity


def _fulfil_package(session: Session, checkout: dict[str, Any], event_type: str, event_id: str | None,
                    product: Product, student: Student, outcome: str) -> Fulfilled:
    package = product.package
    initial = {"paid": PurchaseStatus.PAID, "pending": PurchaseStatus.PENDING, "failed": PurchaseStatus.FAILED}[outcome]

    def make() -> dict[str, Any]:
        return dict(
            student_id=student.id,
            package_id=package.id,
            status=initial,
            stripe_checkout_session_id=checkout["id"],
            stripe_payment_intent_id=checkout.get("payment_intent"),
            **amounts(checkout),
            currency=checkout.get("currency"),
            sold=package_sold(package),  # what this purchase sells, also when its payment settles later
        )

    purchase, created = _lock_or_create(session, PackagePurchase, checkout["id"], make)
    cause = f"checkout:{checkout['id']}"
    if created:
        PACKAGE_PURCHASE.begin(purchase, session=session, cause=cause)
    else:
        if purchase.stripe_payment_intent_id is None and checkout.get("payment_intent"):
            purchase.stripe_payment_intent_id = checkout["payment_intent"]
        if outcome == "paid" and purchase.status in (PurchaseStatus.PENDING, PurchaseStatus.FAILED):
            PACKAGE_PURCHASE.move(purchase, PurchaseStatus.PAID, session=session, cause=cause)
        elif outcome == "failed" and purchase.status == PurchaseStatus.PENDING:
            PACKAGE_PURCHASE.move(purchase, PurchaseStatus.FAILED, session=session, cause=cause)
    session.flush()
    if purchase.status == PurchaseStatus.PAID:
        grant_package(session, purchase, package)
    payments.settle_package(session=session, purchase=purchase, cause=f"checkout:{checkout['id']}")
    session.flush()
    return Fulfilled("package", purchase.id, purchase.status.value, created)


@dataclass
class Refulfilled:
    enrollment_id: int
    status: str
    provisioned: enrollments.Provisioned

    def as_dict(self) -> dict[str, Any]:
        return {"enrollment_id": self.enrollment_id, "status": self.status, **self.provisioned.as_dict()}


def refulfill(*, session: Session, enrollment_id: int) -> Refulfilled:
    """Re-run fulfilment for an enrollment: create only what is missing, never double.

    Then re-apply the payment facts (partial refunds) to any grant that was just re-created.
    """
    enrollment = enrollments.get_enrollment(session, enrollment_id, lock=True)
    if enrollment is None:
        raise NotFound(f"no enrollment {enrollment_id}")
    if enrollment.status not in enrollments.ENTITLED:
        raise enrollments.NotFulfillable(f"enrollment {enrollment_id} is {enrollment.status.value}: nothing is owed")
    program = enrollments.program_of(session, enrollment)
    done = enrollments.provision(session=session, enrollment=enrollment, program=program, cause="refulfill")
    enrollments.announce_created(session=session, enrollment=enrollment, program=program)
    payments.settle_enrollment(session=session, enrollment=enrollment, cause="refulfill")
    return Refulfilled(enrollment.id, enrollment.status.value, done)


def stored_checkouts(session: Session, checkout_session_id: str) -> list:
    """The inbox events about one Checkout Session, oldest first (for re-fulfilment by session id)."""
    return list(session.scalars(
        select(InboxEvent).where(
            InboxEvent.source == InboxSource.STRIPE,
            InboxEvent.type.in_(CHECKOUT_TYPES),
            InboxEvent.payload["data"]["object"]["id"].as_string() == checkout_session_id,
        ).order_by(InboxEvent.id)
    ))


@dataclass
class SessionRefulfilled:
    checkout_session_id: str
    kind: str | None
    id: int | None
    status: str | None
    details: dict[str, Any]
    woken: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"checkout_session_id": self.checkout_session_id, "kind": self.kind, "id": self.id,
                "status": self.status, **self.details, "woken_events": self.woken}


def refulfill_checkout_session(*, ctx: HandlerContext, checkout_session_id: str,
                               stripe_client: Any = None) -> SessionRefulfilled:
    """Admin re-fulfilment by Checkout Session id: the purchase's missing parts, or the purchase itself.

    If the purchase exists it is re-provisioned (`tasks.enrollments.services.refulfill`; a package purchase's
    grant is re-issued if missing). If it does not (its event failed: unknown course, no buyer), it is
    fulfilled from the stored Stripe events, and refunds or disputes parked on its payment are woken
    (the caller enqueues the returned ids after commit).
    """
    session, settings = ctx.session, ctx.settings
    enrollment = enrollments.by_checkout_session(session, checkout_session_id)
    if enrollment is not None:
        done = refulfill(session=session, enrollment_id=enrollment.id)
        return SessionRefulfilled(checkout_session_id, "course", enrollment.id, done.status,
                                  done.provisioned.as_dict(), [])
    package_purchase = session.scalar(select(PackagePurchase).where(
        PackagePurchase.stripe_checkout_session_id == checkout_session_id).with_for_update(key_share=True))
    if package_purchase is not None:
        granted = {}
        if package_purchase.status == PurchaseStatus.PAID:
            package = session.get(CreditPackage, package_purchase.package_id)
            had = credits.lots(session=session, package_purchase_id=package_purchase.id)
            if not had:
                credit_type, quantity = grant_package(session, package_purchase, package)
                granted[credit_type.value] = quantity
            payments.settle_package(session=session, purchase=package_purchase, cause="refulfill")
        return SessionRefulfilled(checkout_session_id, "package", package_purchase.id, package_purchase.status.value,
                                  {"credits_granted": granted}, [])
    events = stored_checkouts(session, checkout_session_id)
    if not events:
        raise NotFound(f"no purchase and no stored Stripe event for checkout session {checkout_session_id}")
    for event in events:  # what the event handlers ignore is no purchase here either
        checkout = event.payload["data"]["object"]
        why = mode_mismatch(settings, event.payload) or (
            f"it is in {checkout.get('mode')} mode" if checkout.get("mode") in NOT_ONE_TIME else None)
        if why:
            raise NotFulfillable(f"checkout session {checkout_session_id} is not a purchase to fulfil: {why}")
    pis = {e.payload["data"]["object"].get("payment_intent") for e in events} - {None}
    keys = {f"payment:{pi}" for pi in pis}
    # the payment's lock, as the runner takes it: no event about it runs, or parks, while we fulfil
    ctx.provides(*keys)
    result = None
    for event in events:
        result = fulfil_checkout(session=session, checkout=event.payload["data"]["object"], event_type=event.type,
                                 event_id=event.event_id, settings=settings, stripe_client=stripe_client,
                                 fetched=ctx.fetched)
    woken = wake_waiting(session=session, keys=keys)
    details = result.provisioned.as_dict() if result.provisioned is not None else {}
    return SessionRefulfilled(checkout_session_id, result.kind, result.id, result.status,
                              {"created_purchase": result.created, **details}, woken)
