"""The dashboard's studio pages: one search for any id with the pending events and the workers' heartbeats
(`/admin/ui/find`), a student's page (enrollments, the credit statement, adjust credits,
enrol by hand) and the manual operations on an enrollment's page (revoke, reinstate, refund with a
preview first). The forms call the same operations as the JSON API (`ingress.admin_operations`), so the
same checks, the same audit entries; a refused operation is a flash message and changes nothing."""
from __future__ import annotations

import uuid

from flask import current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from db.models import CourseProgram, Student, StudentCourseEnrollment
from ingress import admin_operations as operations
from ingress import dashboard
from ingress.bodies import decimal
from ingress.errors import ApiError
from ingress.roles import dashboard_role
from tasks.catalog import services as catalog
from tasks.errors import TaskError
from tasks.messaging.mail import money
from tasks.reporting import ops, search, statement, timeline
from workers import heartbeats

bp = dashboard.page_blueprint("studio_ui", __name__, "/admin/ui")


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


def _form_int(name: str):
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    try:
        return decimal(raw)
    except ValueError:
        return raw  # refused by the operation, naming the field


# --------------------------------------------------------------------------- the student page


@bp.get("/students/<student_id>")
@dashboard_role("viewer")
def student_page(student_id: str):
    with _runtime().db.session_scope() as s:
        student = s.get(Student, student_id)
        rows = [ops.enrollment_row(e, code) for e, code in s.execute(
            select(StudentCourseEnrollment, CourseProgram.code)
            .join(CourseProgram, CourseProgram.id == StudentCourseEnrollment.program_id)
            .where(StudentCourseEnrollment.student_id == student_id).order_by(StudentCourseEnrollment.id))]
        known = student is not None
        person = {"email": student.email, "name": student.name, "timezone": student.timezone} if known else None
        credit_statement = statement.credit_statement(session=s, student_id=student_id, name_admins=True)
        courses = [p.code for p in catalog.live_programs(s)]
        chosen = timeline.parse_kinds(request.args.getlist("kind"))
        rows_of_timeline = timeline.student_timeline(session=s, student_id=student_id, kinds=chosen)
    if not known and not rows and not credit_statement["entries"]:
        raise ApiError(404, "not_found", f"no student {student_id}")
    # the adjust form carries a key of its own: pressing it twice makes one adjustment
    return render_template("dashboard/student.html", student_id=student_id, person=person, enrollments=rows,
                           statement=credit_statement, courses=courses, timeline=rows_of_timeline,
                           kinds=timeline.KINDS, chosen=chosen or (), request_key=f"dashboard-{uuid.uuid4().hex}")


@bp.post("/students/<student_id>/credits")
@dashboard_role("operator")
def adjust_credits(student_id: str):
    data = {"kind": request.form.get("kind"), "quantity": _form_int("quantity"),
            "reason": request.form.get("reason"), "expires_at": request.form.get("expires_at") or None}
    try:
        done = operations.adjust_credits_by_hand(student_id, data, request.form.get("request_key") or None)
        flash(f"Credits adjusted: {data['quantity']} {data['kind']}; balances now "
              + ", ".join(f"{k} {v}" for k, v in done["balances"].items()) + ".", "ok")
    except (TaskError, ApiError) as exc:
        flash(f"Not adjusted: {dashboard.refusal(exc)}", "error")
    return redirect(url_for("studio_ui.student_page", student_id=student_id))


@bp.post("/students/<student_id>/enrollments")
@dashboard_role("operator")
def enroll(student_id: str):
    data = {"student_id": student_id, "course_code": request.form.get("course_code"),
            "reason": request.form.get("reason"), "grant_bundle": request.form.get("grant_bundle") == "on"}
    try:
        done = operations.enroll_by_hand(data)
    except (TaskError, ApiError) as exc:
        flash(f"Not enrolled: {dashboard.refusal(exc)}", "error")
        return redirect(url_for("studio_ui.student_page", student_id=student_id))
    flash(f"Enrolled in {data['course_code']} (enrollment {done['enrollment']['id']}).", "ok")
    return redirect(url_for("dashboard.enrollment_page", enrollment_id=done["enrollment"]["id"]))


# --------------------------------------------------------------------------- an enrollment's operations


def _move(enrollment_id: int, action: str):
    try:
        done = operations.move_by_hand(enrollment_id, action, {"reason": request.form.get("reason")})
        flash(f"Enrollment {enrollment_id} is {done['enrollment']['status']}.", "ok")
    except (TaskError, ApiError) as exc:
        flash(f"Not done: {dashboard.refusal(exc)}", "error")
    return redirect(url_for("dashboard.enrollment_page", enrollment_id=enrollment_id))


@bp.post("/enrollments/<int:enrollment_id>/revoke")
@dashboard_role("operator")
def revoke(enrollment_id: int):
    return _move(enrollment_id, "revoke")


@bp.post("/enrollments/<int:enrollment_id>/reinstate")
@dashboard_role("operator")
def reinstate(enrollment_id: int):
    return _move(enrollment_id, "reinstate")


@bp.post("/enrollments/<int:enrollment_id>/refund")
@dashboard_role("operator")
def refund(enrollment_id: int):
    """`do=preview` shows what would change, with a button to confirm; `do=refund` makes the refund."""
    data = {"amount": _form_int("amount"), "keep_access": request.form.get("keep_access") == "on",
            "reason": request.form.get("reason")}
    try:
        if request.form.get("do") != "refund":
            preview = operations.preview_refund(enrollment_id, data)
            # the confirm button carries a key of its own: pressing it twice makes one refund
            return render_template("dashboard/refund_preview.html", enrollment_id=enrollment_id, preview=preview,
                                   form=data, request_key=f"dashboard-{uuid.uuid4().hex}")
        done = operations.refund_by_hand(enrollment_id, data, request.form.get("request_key") or None)
    except (TaskError, ApiError) as exc:
        flash(f"Not refunded: {dashboard.refusal(exc)}", "error")
        return redirect(url_for("dashboard.enrollment_page", enrollment_id=enrollment_id))
    refund_row = done["refund"]
    if refund_row["status"] == "succeeded":
        flash(f"Refunded {money(refund_row['amount'], refund_row['currency'])} "
              f"({refund_row['stripe_refund_id']}){', access kept' if refund_row['keep_access'] else ''}.", "ok")
    else:
        flash(f"Refund {refund_row['status']}: {refund_row['last_error']}", "error")
    return redirect(url_for("dashboard.enrollment_page", enrollment_id=enrollment_id))


# --------------------------------------------------------------------------- find anything, watch the workers


@bp.get("/find")
@dashboard_role("viewer")
def find_page():
    query = request.args.get("q", "").strip()
    with _runtime().db.session_scope() as s:
        found = search.find(session=s, query=query)
        pending = search.pending_events(session=s)
    return render_template("dashboard/find.html", query=query, found=found, pending=pending,
                           workers=heartbeats.workers(_runtime().db))
