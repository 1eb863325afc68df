"""The course report: how each course sells and how its students progress.

Definitions (also in docs/runbook.md):
- `enrollments`: count per enrollment status (every status present, zeros included).
- `paid`: enrollments whose payment settled at some point (active, suspended, completed, revoked).
- `completion_rate`: completed / paid (0.0 with no paid enrollment), rounded to 4 places.
- `revenue`: Σ (amount_total − amount_refunded) over paid enrollments, in minor units of the course
  currency; `gross` and `refunded` are the two sums. A pending or failed payment is not revenue.
- per step: `booked` = enrollments that have booked the step at some point (progress booked,
  completed or missed), `completed`, `missed`, and `skipped_ahead` = bookings of the step made
  while an earlier step was still unbooked (the plan's "skipped steps" analytics flag).
"""
from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from db.enums import EnrollmentStatus, ProgressStatus
from db.models import CourseProgram, CourseStep, StudentCourseEnrollment, StudentCourseProgress

PAID = (EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED, EnrollmentStatus.COMPLETED, EnrollmentStatus.REVOKED)
EVER_BOOKED = (ProgressStatus.BOOKED, ProgressStatus.COMPLETED, ProgressStatus.MISSED)

CSV_COLUMNS = (
    "course_code", "course_title", "currency", "enrollments_total",
    *(f"enrollments_{s.value}" for s in EnrollmentStatus),
    "paid", "completion_rate", "revenue_gross", "revenue_refunded", "revenue_net",
    "step_position", "step_label", "step_booked", "step_completed", "step_missed", "step_skipped_ahead",
)


def course_report(*, session: Session) -> list[dict[str, Any]]:
    """One dict per live course (draft and published), ordered by code."""
    programs = list(session.scalars(
        select(CourseProgram).where(CourseProgram.deleted_at.is_(None)).order_by(CourseProgram.code)
    ))
    if not programs:
        return []
    ids = [p.id for p in programs]
    by_status: dict[int, dict[str, int]] = {pid: {s.value: 0 for s in EnrollmentStatus} for pid in ids}
    for pid, status, n in session.execute(
        select(StudentCourseEnrollment.program_id, StudentCourseEnrollment.status, func.count())
        .where(StudentCourseEnrollment.program_id.in_(ids))
        .group_by(StudentCourseEnrollment.program_id, StudentCourseEnrollment.status)
    ):
        by_status[pid][status.value] = n
    money: dict[int, tuple[int, int]] = {}
    for pid, gross, refunded in session.execute(
        select(StudentCourseEnrollment.program_id, func.coalesce(func.sum(StudentCourseEnrollment.amount_total), 0),
               func.coalesce(func.sum(StudentCourseEnrollment.amount_refunded), 0))
        .where(StudentCourseEnrollment.program_id.in_(ids), StudentCourseEnrollment.status.in_(PAID))
        .group_by(StudentCourseEnrollment.program_id)
    ):
        money[pid] = (int(gross), int(refunded))

    def count_if(condition):
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    steps: dict[int, list[dict[str, Any]]] = {pid: [] for pid in ids}
    for step, booked, completed, missed, ahead in session.execute(
        select(
            CourseStep,
            count_if(StudentCourseProgress.status.in_(EVER_BOOKED)),
            count_if(StudentCourseProgress.status == ProgressStatus.COMPLETED),
            count_if(StudentCourseProgress.status == ProgressStatus.MISSED),
            count_if(StudentCourseProgress.skipped_ahead.is_(True)),
        )
        .outerjoin(StudentCourseProgress, StudentCourseProgress.step_id == CourseStep.id)
        .where(CourseStep.program_id.in_(ids), CourseStep.deleted_at.is_(None))
        .group_by(CourseStep.id)
        .order_by(CourseStep.program_id, CourseStep.position)
    ):
        steps[step.program_id].append({
            "course_step_id": step.id, "label": step.label, "position": step.position, "title": step.title,
            "booked": int(booked), "completed": int(completed), "missed": int(missed), "skipped_ahead": int(ahead),
        })

    report = []
    for program in programs:
        statuses = by_status[program.id]
        paid = sum(statuses[s.value] for s in PAID)
        gross, refunded = money.get(program.id, (0, 0))
        report.append({
            "course_code": program.code,
            "title": program.title,
            "status": program.status.value,
            "currency": program.price_currency,
            "enrollments": statuses,
            "enrollments_total": sum(statuses.values()),
            "paid": paid,
            "completion_rate": round(statuses[EnrollmentStatus.COMPLETED.value] / paid, 4) if paid else 0.0,
            "revenue": {"gross": gross, "refunded": refunded, "net": gross - refunded},
            "steps": steps[program.id],
            "skipped_ahead": sum(s["skipped_ahead"] for s in steps[program.id]),
        })
    return report


def _cell(value: Any) -> Any:
    # a text cell starting with = + - @ would run as a formula in a spreadsheet: quote it
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def report_csv(report: list[dict[str, Any]]) -> str:
    """One row per (course, step); the course columns repeat on each of its step rows (one row if it has none)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for course in report:
        head = [
            course["course_code"], course["title"], course["currency"], course["enrollments_total"],
            *(course["enrollments"][s.value] for s in EnrollmentStatus),
            course["paid"], f'{course["completion_rate"]:.4f}', course["revenue"]["gross"],
            course["revenue"]["refunded"], course["revenue"]["net"],
        ]
        for step in course["steps"] or [None]:
            tail = (["", "", "", "", "", ""] if step is None else
                    [step["position"], step["label"], step["booked"], step["completed"], step["missed"],
                     step["skipped_ahead"]])
            writer.writerow([_cell(v) for v in (*head, *tail)])
    return out.getvalue()
