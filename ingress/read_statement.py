"""GET /v1/students/<id>/credits/statement: every ledger entry with its cause in words and a running
balance (`tasks.reporting.statement`); a student we never heard of has an empty statement."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ingress.roles import require_reader
from tasks.reporting import statement

bp = Blueprint("read_statement", __name__, url_prefix="/v1")


@bp.get("/students/<student_id>/credits/statement")
@require_reader
def credit_statement(student_id: str):
    with current_app.config["COURSEPIPE_RUNTIME"].db.session_scope() as session:
        return jsonify(statement.credit_statement(session=session, student_id=student_id))
