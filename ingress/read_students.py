"""GET /v1/students/<id>/courses and /v1/students/<id>/credits.

A student we have never heard of simply has no enrollments and zero balances (200, not 404): the
frontend asks for any logged-in student, whether or not they bought anything yet.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ingress.roles import require_reader
from tasks.ledger import credits
from tasks.enrollments import services as enrollments

bp = Blueprint("read_students", __name__, url_prefix="/v1")


def _db():
    return current_app.config["COURSEPIPE_RUNTIME"].db


@bp.get("/students/<student_id>/courses")
@require_reader
def student_courses(student_id: str):
    with _db().session_scope() as session:
        return jsonify(enrollments.student_courses(session=session, student_id=student_id))


@bp.get("/students/<student_id>/credits")
@require_reader
def student_credits(student_id: str):
    with _db().session_scope() as session:
        balances = credits.balances(session=session, student_id=student_id)
    return jsonify({"student_id": student_id, "balances": balances})
