"""Platform events: mirrors and the booking lifecycle.

Each handler re-reads the stored event's `data` with the models the ingress validated it with and
calls one service function; the runner owns the transaction. A booking's arrival provides
`booking:<id>` (waking a cancel or attendance that came first); a booking's end provides
`booking-ended:<id>` (waking a newer booking of the same step that waited for it).
"""
from __future__ import annotations

import logging
from datetime import datetime

from db.enums import ClassStatus, InboxSource
from db.models import InboxEvent
from db.types import utcnow
from tasks.bookings import alerts, mirrors
from tasks.bookings import services as bookings
from tasks.enrollments import reminders
from tasks.events import platform_data
from tasks.inbox.context import HandlerContext

log = logging.getLogger("coursepipe.bookings")


def _data(event: InboxEvent):
    return platform_data(event.type, event.payload["data"])


def _by_arrival(event: InboxEvent, stamp: datetime, what: str) -> datetime:
    """`stamp` (`what` the platform says) but never later than the event reached us: a sender's clock running
    ahead must not date the event after the ones that follow it."""
    if event.received_at is not None and stamp > event.received_at:
        log.warning("platform event %s (%s) gives %s %s, after it reached us at %s: taken as %s", event.event_id,
                    event.type, what, stamp.isoformat(), event.received_at.isoformat(), event.received_at.isoformat())
        return event.received_at
    return stamp


def occurred_at(event: InboxEvent) -> datetime:
    """When the platform says it happened (the column, else the stored envelope), by its arrival at the latest
    (`_by_arrival`): later, it would make a mirror update that later ones cannot replace, or a booking that a later
    rebooking of its step would count as older history."""
    stamp = event.occurred_at
    if stamp is None:
        stamp = datetime.fromisoformat(str(event.payload["occurred_at"]).replace("Z", "+00:00"))
    return _by_arrival(event, stamp, "occurred_at")


def _not_after_arrival(event: InboxEvent, data, field: str):
    """`data` with its instant `field` (a cancel's `cancelled_at`, an attendance's `marked_at`) by its arrival at
    the latest, as `occurred_at` (a credit spent again must not be judged against a lot's expiry at a time not come
    yet)."""
    stamp = getattr(data, field)
    taken = _by_arrival(event, stamp, field)
    return data if taken is stamp else data.model_copy(update={field: taken})


def on_student_upserted(ctx: HandlerContext, event: InboxEvent) -> None:
    mirrors.upsert_student(session=ctx.session, data=_data(event), occurred_at=occurred_at(event))


def on_class_upserted(ctx: HandlerContext, event: InboxEvent) -> None:
    at = occurred_at(event)
    data = _data(event)
    group_class, applied, moved_from = mirrors.upsert_class(session=ctx.session, data=data, occurred_at=at)
    cancelled = group_class.status == ClassStatus.CANCELLED
    # a cancellation that arrives after a newer upsert scheduled the class again is stale, not void: the bookings
    # made before it ended with it (the platform cancelled them then), whatever the class's state since
    cancelling = data.status == ClassStatus.CANCELLED.value
    # its students' rows, before the reminders listing the class: the order an erasure takes them in
    students = bookings.hold_students_of_class(ctx.session, group_class.id) if cancelled or cancelling else {}
    if moved_from is not None or cancelled:  # its reminders still to send name the old time, or a class gone
        reminders.class_changed(session=ctx.session, class_id=group_class.id, starts_at=group_class.starts_at,
                                cancelled=cancelled)
    if cancelled or cancelling:
        # the ended bookings' keys: after their rows, before the students' (see on_booking_cancelled)
        # a class still cancelled ends every booking on it; one scheduled again since, those made by this
        # cancellation (bookings made later are the newer state's)
        bookings.cancel_class(session=ctx.session, group_class=group_class,
                              at=at if cancelling else group_class.cancelled_at or at, students=students,
                              made_by=None if cancelled else at,
                              ending=lambda ids: ctx.provides(*(bookings.booking_ended_key(b) for b in ids)))
    if applied:  # a newer class state: the seats left may have crossed the alert threshold
        threshold = getattr(ctx.settings, "low_seat_threshold", alerts.DEFAULT_LOW_SEAT_THRESHOLD)
        alerts.check_low_seats(session=ctx.session, class_id=group_class.id, threshold=threshold)


def on_booking_created(ctx: HandlerContext, event: InboxEvent) -> None:
    data = _data(event)
    young = utcnow() - event.received_at < bookings.HOLD_WINDOW
    bookings.record_booking(session=ctx.session, data=data, at=occurred_at(event), may_wait=young)
    ctx.provides(bookings.booking_key(data.booking_id))


def on_booking_cancelled(ctx: HandlerContext, event: InboxEvent) -> None:
    # the key's lock after the booking's row and before the student's, as a class's cancellation takes them: a
    # credit booking parked on the key holds its lock and then wants the student's, which releasing this booking's
    # credit takes
    bookings.cancel_booking(session=ctx.session, data=_not_after_arrival(event, _data(event), "cancelled_at"),
                            ending=lambda ids: ctx.provides(*(bookings.booking_ended_key(b) for b in ids)))


def on_attendance_marked(ctx: HandlerContext, event: InboxEvent) -> None:
    bookings.mark_attendance(session=ctx.session, data=_not_after_arrival(event, _data(event), "marked_at"),
                             ending=lambda ids: ctx.provides(*(bookings.booking_ended_key(b) for b in ids)))


_PLATFORM = InboxSource.PLATFORM.value
HANDLERS = {
    (_PLATFORM, "student.upserted"): on_student_upserted,
    (_PLATFORM, "class.upserted"): on_class_upserted,
    (_PLATFORM, "booking.created"): on_booking_created,
    (_PLATFORM, "booking.cancelled"): on_booking_cancelled,
    (_PLATFORM, "attendance.marked"): on_attendance_marked,
}
