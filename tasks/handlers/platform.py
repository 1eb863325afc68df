"""Platform events (CONTRACT §3.2): mirrors and the booking lifecycle.

Each handler re-reads the stored event's `data` with the models the ingress validated it with and
calls one `tasks/` function; the runner owns the transaction. A booking's arrival provides
`booking:<id>` (waking a cancel or attendance that came first); a booking's end provides
`booking-ended:<id>` (waking a newer booking of the same step that waited for it).
"""
from __future__ import annotations

from datetime import datetime

from db.enums import ClassStatus, InboxSource
from db.models import GroupClass, InboxEvent
from db.types import utcnow
from tasks import bookings, mirrors
from tasks.events import platform_data
from tasks.inbox import handles, provides


def _data(event: InboxEvent):
    return platform_data(event.type, event.payload["data"])


def occurred_at(event: InboxEvent) -> datetime:
    """When the platform says it happened (the column, else the stored envelope)."""
    if event.occurred_at is not None:
        return event.occurred_at
    return datetime.fromisoformat(str(event.payload["occurred_at"]).replace("Z", "+00:00"))


@handles(InboxSource.PLATFORM, "student.upserted")
def on_student_upserted(session, event: InboxEvent) -> None:
    mirrors.upsert_student(session=session, data=_data(event), occurred_at=occurred_at(event))


@handles(InboxSource.PLATFORM, "class.upserted")
def on_class_upserted(session, event: InboxEvent) -> None:
    at = occurred_at(event)
    group_class, applied = mirrors.upsert_class(session=session, data=_data(event), occurred_at=at)
    if group_class.status == ClassStatus.CANCELLED:
        ended = bookings.cancel_class(session=session, group_class=group_class, at=at)
        provides(session, *(bookings.booking_ended_key(b) for b in ended))
    if applied:
        after_class_upserted(session, group_class)


def after_class_upserted(session, group_class: GroupClass) -> None:
    """Hook for what else a newer class state triggers (the low-seat check belongs here)."""
    from coursepipe.settings import DEFAULT_LOW_SEAT_THRESHOLD
    from tasks import alerts
    from tasks.inbox import settings_of

    settings = settings_of(session)
    threshold = settings.low_seat_threshold if settings is not None else DEFAULT_LOW_SEAT_THRESHOLD
    alerts.check_low_seats(session=session, class_id=group_class.id, threshold=threshold)


@handles(InboxSource.PLATFORM, "booking.created")
def on_booking_created(session, event: InboxEvent) -> None:
    data = _data(event)
    young = utcnow() - event.received_at < bookings.HOLD_WINDOW
    bookings.record_booking(session=session, data=data, at=occurred_at(event), may_wait=young)
    provides(session, bookings.booking_key(data.booking_id))


@handles(InboxSource.PLATFORM, "booking.cancelled")
def on_booking_cancelled(session, event: InboxEvent) -> None:
    booking = bookings.cancel_booking(session=session, data=_data(event))
    provides(session, bookings.booking_ended_key(booking.id))


@handles(InboxSource.PLATFORM, "attendance.marked")
def on_attendance_marked(session, event: InboxEvent) -> None:
    booking = bookings.mark_attendance(session=session, data=_data(event))
    provides(session, bookings.booking_ended_key(booking.id))
