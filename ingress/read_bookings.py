"""GET /v1/students/<id>/steps/<step_id>/eligibility and GET /v1/calendar.

Eligibility is answered synchronously from the same rule the event path applies
(`tasks.bookings.services.step_guard`), without the queue. The calendar lists mirrored classes in a window,
each tagged with the course steps (of published courses) it serves.
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, request

from ingress.roles import require_reader
from ingress.errors import ApiError
from tasks.bookings import services as bookings
from tasks.reporting import calendar

bp = Blueprint("read_bookings", __name__, url_prefix="/v1")


def _db():
    return current_app.config["COURSEPIPE_RUNTIME"].db


@bp.get("/students/<student_id>/steps/<int(max=9223372036854775807):course_step_id>/eligibility")
@require_reader
def eligibility(student_id: str, course_step_id: int):
    # read as the events read ids: surrounding spaces stripped, so the answer is the one booking.created applies
    class_id = (request.args.get("class_id") or "").strip() or None
    with _db().session_scope() as session:
        verdict = bookings.step_guard(session=session, student_id=student_id, course_step_id=course_step_id,
                                      class_id=class_id)
        body = verdict.as_dict()
        body.update({"student_id": student_id, "course_step_id": course_step_id, "class_id": class_id,
                     "enrollment_id": verdict.enrollment.id if verdict.enrollment is not None else None})
    return jsonify(body)


def _instant(name: str) -> datetime:
    value = request.args.get(name)
    if not value:
        raise ApiError(400, "invalid_parameter", f"{name}: an ISO 8601 date-time is required")
    try:
        parsed = datetime.fromisoformat(value.strip().replace(" ", "+").replace("Z", "+00:00"))
        # a date-time without an offset is read as UTC; one in year 1 ahead of UTC lies before any date
        return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_parameter", f"{name}: {value!r} is not an ISO 8601 date-time "
                                                 "within the years 1 to 9999 (UTC)") from None


@bp.get("/calendar")
@require_reader
def calendar_window():
    start, end = _instant("from"), _instant("to")
    if end <= start:
        raise ApiError(400, "invalid_parameter", "to: must be after from")
    if end - start > calendar.MAX_WINDOW:
        raise ApiError(400, "invalid_parameter", f"the window may span at most {calendar.MAX_WINDOW.days} days")
    with _db().session_scope() as session:
        classes, rest = calendar.classes_between(session=session, start=start, end=end)
    return jsonify({"from": start.isoformat(), "to": end.isoformat(), "classes": classes,
                    "next_from": rest.isoformat() if rest is not None else None})
