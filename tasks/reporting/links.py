"""What an inbox event is connected to, for the links on its page: the enrollment (or package purchase)
it is about, its student, and the other events of the same subject — the same student (their profile
and their bookings), checkout session or payment intent — newest first. And the other way: an
enrollment's events.

Read-only, taking `*, session`.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import Booking, CourseProgram, InboxEvent, PackagePurchase, StudentCourseEnrollment
from tasks.events import stripe_id
from tasks.reporting import timeline
from tasks.reporting.ops import enrollment_row

RELATED_LIMIT = 50


def _event_view(event: InboxEvent) -> dict[str, Any]:
    return {"id": event.id, "source": event.source.value, "type": event.type, "event_id": event.event_id,
            "subject": event.subject, "status": event.status.value, "received_at": event.received_at}


def _payment_keys(event: InboxEvent) -> set[str]:
    """The checkout session and payment intent ids an event names (subject and Stripe object)."""
    keys = set()
    if event.subject and event.subject.startswith("payment:"):
        keys.add(event.subject.split(":", 1)[1])
    obj = ((event.payload or {}).get("data") or {}).get("object")
    if event.source.value == "stripe" and isinstance(obj, dict):
        if event.type.startswith("checkout.session.") and obj.get("id"):
            keys.add(obj["id"])
        if stripe_id(obj.get("payment_intent")):
            keys.add(stripe_id(obj.get("payment_intent")))
    return {k for k in keys if isinstance(k, str) and k}


def _booking_id(event: InboxEvent) -> str | None:
    if event.subject and event.subject.startswith("booking:"):
        return event.subject.split(":", 1)[1]
    value = ((event.payload or {}).get("data") or {}).get("booking_id")
    return value if isinstance(value, str) else None


def event_links(*, session: Session, inbox_id: int, limit: int = RELATED_LIMIT) -> dict[str, Any]:
    """{"enrollments", "package_purchases", "student_id", "events"} for one inbox event (empty when unknown)."""
    event = session.get(InboxEvent, inbox_id)
    if event is None:
        return {"enrollments": [], "package_purchases": [], "student_id": None, "events": []}
    payments = _payment_keys(event)
    student_id = event.subject.split(":", 1)[1] if event.subject and event.subject.startswith("student:") else None

    enrollments: list[StudentCourseEnrollment] = []
    purchases: list[PackagePurchase] = []
    if payments:
        enrollments = list(session.scalars(select(StudentCourseEnrollment).where(or_(
            StudentCourseEnrollment.stripe_checkout_session_id.in_(payments),
            StudentCourseEnrollment.stripe_payment_intent_id.in_(payments)))))
        purchases = list(session.scalars(select(PackagePurchase).where(or_(
            PackagePurchase.stripe_checkout_session_id.in_(payments),
            PackagePurchase.stripe_payment_intent_id.in_(payments)))))
    booking_id = _booking_id(event)
    booking = session.get(Booking, booking_id) if booking_id else None
    if booking is not None:
        student_id = booking.student_id
        if booking.enrollment_id is not None:
            enrollments.append(session.get(StudentCourseEnrollment, booking.enrollment_id))
    owners = {e.student_id for e in enrollments} | {p.student_id for p in purchases}
    if student_id is None and len(owners) == 1:
        student_id = owners.pop()

    subjects = {event.subject} if event.subject else set()
    for row in (*enrollments, *purchases):
        payments.add(row.stripe_checkout_session_id)
        if row.stripe_payment_intent_id:
            payments.add(row.stripe_payment_intent_id)
    subjects |= {f"payment:{key}" for key in payments}
    if student_id:  # the student's own events, and those about their bookings (cancellations, attendance)
        subjects.add(f"student:{student_id}")
        subjects |= {f"booking:{b}" for b in session.scalars(
            select(Booking.id).where(Booking.student_id == student_id).order_by(Booking.id.desc()).limit(limit))}
    if booking_id:
        subjects.add(f"booking:{booking_id}")
    others = list(session.scalars(
        select(InboxEvent).where(InboxEvent.subject.in_(sorted(subjects)), InboxEvent.id != event.id)
        .order_by(InboxEvent.id.desc()).limit(limit))) if subjects else []

    unique = {e.id: e for e in enrollments}
    codes = _course_codes(session, list(unique))
    return {
        "enrollments": [enrollment_row(e, codes[e.id]) for e in sorted(unique.values(), key=lambda e: e.id)],
        "package_purchases": [{"id": p.id, "status": p.status.value, "student_id": p.student_id,
                               "checkout_session_id": p.stripe_checkout_session_id} for p in purchases],
        "student_id": student_id,
        "events": [_event_view(e) for e in others],
    }


def _course_codes(session: Session, enrollment_ids: list[int]) -> dict[int, str]:
    if not enrollment_ids:
        return {}
    return dict(session.execute(select(StudentCourseEnrollment.id, CourseProgram.code)
                                .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
                                .where(StudentCourseEnrollment.id.in_(enrollment_ids))).all())


def enrollment_events(*, session: Session, enrollment_id: int, limit: int = RELATED_LIMIT) -> list[dict[str, Any]]:
    """The inbox events about an enrollment's payment and bookings, newest first."""
    enrollment = session.get(StudentCourseEnrollment, enrollment_id)
    if enrollment is None:
        return []
    events = timeline.events_about(session, enrollment, limit)
    return [_event_view(e) for e in sorted(events, key=lambda e: e.id, reverse=True)[:limit]]
