"""POST /admin/enrollments/<id>/refulfill: re-run fulfilment, creating only what is missing."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ingress import roles
from ingress.bodies import json_object
from ingress.roles import require_role
from ingress.errors import ApiError
from tasks.enrollments import services as enrollments
from tasks.errors import NotFound
from tasks.purchases import fulfilment

bp = Blueprint("admin_enrollments", __name__, url_prefix="/admin")


@bp.post("/enrollments/<int:enrollment_id>/refulfill")
@require_role("operator")
def refulfill(enrollment_id: int):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    try:
        with runtime.db.session_scope() as session:
            done = fulfilment.refulfill(session=session, enrollment_id=enrollment_id)
            roles.record_action(session, "enrollment.refulfill", f"enrollment:{enrollment_id}",
                                roles.reason_of(json_object(optional=True)), created=done.provisioned.as_dict())
            view = enrollments.enrollment_view(session, enrollments.get_enrollment(session, enrollment_id))
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except enrollments.NotFulfillable as exc:
        raise ApiError(409, "not_fulfillable", str(exc)) from None
    return jsonify({"refulfilled": True, "created": done.provisioned.as_dict(), "enrollment": view})
