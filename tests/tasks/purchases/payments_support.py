"""Stripe payment events for fulfilment / refund / dispute tests, built from the recorded fixtures.

`deliver` stores an event in the inbox and runs the runner core on it (the fast path); `state`
summarizes what a student ended up with, for comparisons that must not depend on event order.
"""
from __future__ import annotations

import uuid

from sqlalchemy import select

from db.enums import InboxSource
from db.models import (
    InboxEvent,
    PackagePurchase,
    PaymentDispute,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from tests import inbox_api as inbox
from tasks.ledger import credits
from tasks.events import stripe_subject
from tasks.purchases.fast_purchase import is_purchase
from tests.signing import stripe_event

COURSE_PRICE = 12000


def checkout(cs="cs_test_1", pi="pi_1", student="stu_1", course="SFZ", amount=COURSE_PRICE, package=None,
             payment_status="paid", type_="checkout.session.completed", event_id=None, email="buyer@example.test",
             metadata=None):
    if metadata is None:
        metadata = {"kind": "package", "package_code": package} if package else {"kind": "course",
                                                                                   "course_code": course}
    event = stripe_event("checkout.session.completed", event_id=event_id, id=cs, payment_intent=pi,
                         client_reference_id=student, metadata=metadata, amount_total=amount,
                         amount_subtotal=amount, payment_status=payment_status,
                         customer_details={"email": email, "name": "Buyer", "tax_exempt": "none", "tax_ids": []})
    event["type"] = type_
    return event


def charge_refunded(pi="pi_1", amount=COURSE_PRICE, refunded=COURSE_PRICE, refunds=(("re_1", COURSE_PRICE),),
                    charge="ch_1", event_id=None):
    data = [{"id": rid, "object": "refund", "amount": ramount, "charge": charge, "currency": "usd",
             "payment_intent": pi, "status": "succeeded"} for rid, ramount in refunds]
    return stripe_event("charge.refunded", event_id=event_id, id=charge, payment_intent=pi, amount=amount,
                        amount_captured=amount, amount_refunded=refunded, refunded=refunded >= amount,
                        refunds={"object": "list", "data": data, "has_more": False, "total_count": len(data)})


def refund_created(refund_id="re_1", pi="pi_1", amount=COURSE_PRICE, charge="ch_1", status="succeeded",
                   event_id=None):
    event = stripe_event("charge.refund.updated", event_id=event_id, id=refund_id, payment_intent=pi,
                         amount=amount, charge=charge, status=status)
    event["type"] = "refund.created"
    return event


def dispute_created(dispute="dp_1", pi="pi_1", amount=COURSE_PRICE, charge="ch_1", event_id=None):
    return stripe_event("charge.dispute.created", event_id=event_id, id=dispute, payment_intent=pi,
                        amount=amount, charge=charge)


def dispute_closed(dispute="dp_1", pi="pi_1", status="won", amount=COURSE_PRICE, charge="ch_1", event_id=None):
    return stripe_event("charge.dispute.closed", event_id=event_id, id=dispute, payment_intent=pi,
                        amount=amount, charge=charge, status=status)


def store(database, event) -> int:
    with database.session_scope() as s:
        return inbox.store_event(session=s, source=InboxSource.STRIPE, event_id=event["id"], type=event["type"],
                                 payload=event, subject=stripe_subject(event["type"], event["data"]["object"]),
                                 occurred_at=None).id


def run(database, inbox_id, settings=None, fast=True, purchase=False) -> inbox.Result:
    """Process one row, then whatever it woke (as the actor would enqueue them: unmarked).

    `purchase`: the message is marked as a purchase, as the ingress marks it (`inbox.run_message`).
    """
    if purchase:
        result = inbox.run_message(database=database, inbox_id=inbox_id, settings=settings, purchase=True)
    else:
        result = inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_id, settings=settings,
                                 fast=fast)
    for woken in result.woken:
        run(database, woken, settings, fast)
    return result


def deliver(database, event, settings=None, fast=True, marked=False) -> inbox.Result:
    """Store and process `event`; `marked`: its message says purchase when the ingress would say so."""
    purchase = marked and is_purchase("stripe", event["type"], event)
    return run(database, store(database, event), settings, fast, purchase=purchase)


def inbox_row(database, event) -> InboxEvent:
    with database.session_scope() as s:
        return s.scalar(select(InboxEvent).where(InboxEvent.event_id == event["id"]))


def state(database, student_id="stu_1") -> dict:
    """What the student ended up with: enrollments, step statuses, packages, disputes, balances."""
    with database.session_scope() as s:
        enrollments = s.scalars(select(StudentCourseEnrollment).where(StudentCourseEnrollment.student_id == student_id)
                                .order_by(StudentCourseEnrollment.stripe_checkout_session_id)).all()
        out = {"enrollments": [], "packages": [], "balances": credits.balances(session=s, student_id=student_id)}
        for e in enrollments:
            steps = s.scalars(select(StudentCourseProgress.status).where(StudentCourseProgress.enrollment_id == e.id)
                              .order_by(StudentCourseProgress.step_id)).all()
            lots = credits.lots(session=s, enrollment_id=e.id)
            out["enrollments"].append({
                "session": e.stripe_checkout_session_id, "status": e.status.value, "refunded": e.amount_refunded,
                "steps": [p.value for p in steps],
                "lots": sorted((lot.grant.credit_type.value, lot.grant.quantity, lot.remaining) for lot in lots),
            })
        for p in s.scalars(select(PackagePurchase).where(PackagePurchase.student_id == student_id)
                           .order_by(PackagePurchase.stripe_checkout_session_id)):
            out["packages"].append({"session": p.stripe_checkout_session_id, "status": p.status.value,
                                    "refunded": p.amount_refunded})
        out["disputes"] = sorted((d.stripe_dispute_id, d.status.value) for d in s.scalars(select(PaymentDispute)))
        return out


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"
