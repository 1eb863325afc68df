"""Read API for courses: published courses with their price (that of the Stripe price they are sold with),
and one course's steps with their options (mirrored class, start, seats left)."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from db.enums import ProgramStatus
from ingress.roles import require_reader
from ingress.errors import ApiError
from tasks.catalog import services as catalog
from tasks.purchases import selling

bp = Blueprint("read_courses", __name__, url_prefix="/v1")


def _priced(view: dict, price: dict) -> dict:
    view["price"] = price
    return view


def _summary(view: dict) -> dict:
    return {k: view[k] for k in ("code", "title", "description", "marketing_copy", "timezone", "price",
                                 "published", "bundle")} | {
        "steps": [{"id": s["id"], "label": s["label"], "position": s["position"], "title": s["title"]}
                  for s in view["steps"]]}


@bp.get("/courses")
@require_reader
def list_courses():
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    with runtime.db.session_scope() as session:
        programs = catalog.published_programs(session)
        courses = [_summary(_priced(catalog.course_view(session, p), price))
                   for p, price in zip(programs, selling.price_views(session, programs))]
    return jsonify({"courses": courses})


@bp.get("/courses/<code>")
@require_reader
def get_course(code: str):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    with runtime.db.session_scope() as session:
        program = catalog.live_program(session, code)
        if program is None or program.status is not ProgramStatus.PUBLISHED:
            raise ApiError(404, "not_found", f"course {code!r} is not published")
        view = _priced(catalog.course_view(session, program, with_classes=True), selling.price_view(session, program))
    view.pop("status", None)
    return jsonify(view)
