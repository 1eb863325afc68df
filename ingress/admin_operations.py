"""Manual operations (operator), each with a required reason and its audit entry, in the operation's own
transaction:

- `POST /admin/enrollments` {student_id, course_code, reason, grant_bundle} — enrol by hand (201);
- `POST /admin/students/<id>/credits` {kind, quantity (±), reason, expires_at?} — a ledger adjustment;
- `POST /admin/enrollments/<id>/revoke` and `/reinstate` {reason};
- `POST /admin/enrollments/<id>/refund` {amount?, keep_access, reason, preview} — `preview: true` answers
  what would change and changes nothing; otherwise the Stripe refund is made (`workers.refunds`;
  an `Idempotency-Key` header makes a retry safe).

Bad input is a 400 naming the field; a state that does not allow the operation a 409; nothing changes.
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import Blueprint, current_app, jsonify, request

from ingress import roles
from ingress.bodies import checked_key, idempotency_key, json_object
from ingress.errors import ApiError, error_response
from ingress.roles import require_role
from tasks.admins import audit
from tasks.enrollments import services as enrollments
from tasks.errors import KeyReused, ValidationFailed
from tasks.ledger import adjustments, credits
from tasks.purchases import manual
from tasks.stripe_api import StripeNotConfigured
from workers import refunds as refund_calls
from workers.actors import send

bp = Blueprint("admin_operations", __name__, url_prefix="/admin")


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


# the domain's refusals of a manual operation: each a 409 with its code
CONFLICTS = {enrollments.AlreadyEnrolled: "already_enrolled", manual.NotAllowed: "not_allowed",
             manual.NotRefundable: "not_refundable", adjustments.NotEnoughCredit: "not_enough_credit",
             KeyReused: "idempotency_key_reused"}


def _conflict(exc):
    return error_response(409, CONFLICTS[type(exc)], str(exc))


for _refusal in CONFLICTS:
    bp.register_error_handler(_refusal, _conflict)


def _body(*allowed: str) -> dict:
    return json_object(*allowed)


def _bool(data: dict, name: str, default: bool | None = None) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ValidationFailed(f"{name}: true or false", field=name)
    return value


def _string(data: dict, name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ValidationFailed(f"{name}: required, 1 to 64 characters", field=name)
    return value.strip()


def _datetime(data: dict, name: str) -> datetime | None:
    value = data.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        # in UTC; one an hour from either end of the years 1 to 9999 cannot be
        parsed = parsed.astimezone(timezone.utc) if parsed is not None and parsed.tzinfo is not None else None
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None:
        raise ValidationFailed(f"{name}: an ISO 8601 time with its offset, e.g. 2027-01-31T23:59:00+01:00, "
                               "within the years 1 to 9999 (UTC)", field=name)
    return parsed


# --------------------------------------------------------------------------- enrol by hand


def enroll_by_hand(data: dict) -> dict:
    """Shared by the JSON route and the dashboard's form."""
    student_id, course_code = _string(data, "student_id"), _string(data, "course_code")
    reason, grant_bundle = audit.required_reason(data.get("reason")), _bool(data, "grant_bundle")
    with _runtime().db.session_scope() as s:
        entry = roles.record_action(s, "enrollment.create", f"student:{student_id}", reason,
                                    course_code=course_code, grant_bundle=grant_bundle)
        enrollment, provisioned = manual.enroll(session=s, student_id=student_id, course_code=course_code,
                                                grant_bundle=grant_bundle, cause=f"admin:{entry.id}", reason=reason,
                                                actor=entry.actor)
        entry.details = {**entry.details, "enrollment_id": enrollment.id}
        view = enrollments.enrollment_view(s, enrollment)
    send("relay_outbox")  # enrollment.created and the welcome mail
    return {"enrollment": view, "created": provisioned.as_dict()}


@bp.post("/enrollments")
@require_role("operator")
def enroll():
    return jsonify(enroll_by_hand(_body("student_id", "course_code", "reason", "grant_bundle"))), 201


# --------------------------------------------------------------------------- credits

REQUEST_KEY_MAX = 128  # admin_refund.request_key's length; a credit adjustment's key keeps the same bound


def adjust_credits_by_hand(student_id: str, data: dict, request_key: str | None = None) -> dict:
    """A ledger adjustment. With `request_key` (an Idempotency-Key, or the dashboard form's own) a request sent
    again answers the adjustment it made instead of making a second one; with another body, KeyReused."""
    kind, quantity = adjustments.parse_kind(data.get("kind")), adjustments.parse_quantity(data.get("quantity"))
    reason, expires_at = audit.required_reason(data.get("reason")), _datetime(data, "expires_at")
    asked = {"kind": kind.value, "quantity": quantity, "expires_at": expires_at.isoformat() if expires_at else None}
    target = f"student:{student_id}"
    with _runtime().db.session_scope() as s:
        entry = None
        if checked_key(request_key, REQUEST_KEY_MAX) is not None:
            credits.lock_student(s, student_id)  # the same key sent twice at once: the second finds the first
            entry = audit.keyed(session=s, action="credits.adjust", target=target, request_key=request_key)
            if entry is not None and {k: entry.details.get(k) for k in asked} != asked:
                raise KeyReused(f"Idempotency-Key {request_key!r} was used for another adjustment (audit entry "
                                f"{entry.id}): a new adjustment needs a new key")
        if entry is None:
            entry = roles.record_action(s, "credits.adjust", target, reason, **asked,
                                        **({"request_key": request_key} if request_key else {}))
            made = adjustments.adjust(session=s, student_id=student_id, credit_type=kind, quantity=quantity,
                                      cause=f"adjustment:{entry.id}", expires_at=expires_at)
        else:
            made = adjustments.made_by(session=s, student_id=student_id, credit_type=kind,
                                       cause=f"adjustment:{entry.id}")
        return {"student_id": student_id, "entries": [adjustments.entry_view(e) for e in made],
                "balances": credits.balances(session=s, student_id=student_id)}


@bp.post("/students/<student_id>/credits")
@require_role("operator")
def adjust_credits(student_id: str):
    return jsonify(adjust_credits_by_hand(student_id, _body("kind", "quantity", "reason", "expires_at"),
                                          idempotency_key(REQUEST_KEY_MAX))), 201


# --------------------------------------------------------------------------- revoke, reinstate


MOVES = {"revoke": manual.revoke, "reinstate": manual.reinstate}


def move_by_hand(enrollment_id: int, action: str, data: dict) -> dict:
    reason = audit.required_reason(data.get("reason"))
    with _runtime().db.session_scope() as s:
        entry = roles.record_action(s, f"enrollment.{action}", f"enrollment:{enrollment_id}", reason)
        enrollment = MOVES[action](session=s, enrollment_id=enrollment_id, cause=f"admin:{entry.id}")
        view = enrollments.enrollment_view(s, enrollment)
    send("relay_outbox")  # the platform hears of it
    return {"enrollment": view}


@bp.post("/enrollments/<int:enrollment_id>/revoke")
@require_role("operator")
def revoke(enrollment_id: int):
    return jsonify(move_by_hand(enrollment_id, "revoke", _body("reason")))


@bp.post("/enrollments/<int:enrollment_id>/reinstate")
@require_role("operator")
def reinstate(enrollment_id: int):
    return jsonify(move_by_hand(enrollment_id, "reinstate", _body("reason")))


# --------------------------------------------------------------------------- refund


def preview_refund(enrollment_id: int, data: dict) -> dict:
    keep_access = _bool(data, "keep_access")
    audit.required_reason(data.get("reason"))
    with _runtime().db.session_scope() as s:
        plan = manual.check_refund(session=s, enrollment_id=enrollment_id, amount=data.get("amount"))
        return {"preview": True, **manual.preview_refund(session=s, plan=plan, keep_access=keep_access)}


def refund_by_hand(enrollment_id: int, data: dict, request_key: str | None) -> dict:
    """The admin refund's view (`status` succeeded, failed or pending) and, when made, the enrollment."""
    keep_access, reason = _bool(data, "keep_access"), audit.required_reason(data.get("reason"))
    checked_key(request_key, REQUEST_KEY_MAX)
    runtime = _runtime()
    try:
        result = refund_calls.refund_enrollment(
            unit_of_work=runtime.db.session_scope, settings=runtime.settings, principal=roles.current_principal(),
            enrollment_id=enrollment_id, amount=data.get("amount"), keep_access=keep_access, reason=reason,
            request_key=request_key)
    except StripeNotConfigured as exc:
        raise ApiError(503, "stripe_not_configured", str(exc)) from None
    send("relay_outbox")
    answer = {"refund": result}
    if result["status"] == "succeeded":
        with runtime.db.session_scope() as s:
            answer["enrollment"] = enrollments.enrollment_view(s, enrollments.get_enrollment(s, enrollment_id))
    return answer


@bp.post("/enrollments/<int:enrollment_id>/refund")
@require_role("operator")
def refund(enrollment_id: int):
    data = _body("amount", "keep_access", "reason", "preview")
    if _bool(data, "preview", False):
        return jsonify(preview_refund(enrollment_id, data))
    answer = refund_by_hand(enrollment_id, data, idempotency_key(REQUEST_KEY_MAX))
    status = answer["refund"]["status"]
    if status == "failed":
        return jsonify({"error": {"code": "stripe_refused", "message": answer["refund"]["last_error"]}, **answer}), 402
    if status == "pending":
        return jsonify({"error": {"code": "stripe_unavailable",
                                  "message": "the refund's outcome is unknown; retry with the same Idempotency-Key"},
                        **answer}), 502
    return jsonify(answer), 201
