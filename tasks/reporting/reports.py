"""The course report: how each course (and each credit package) sells and how its students progress.

Definitions (also in docs/runbook.md):
- `enrollments`: count per enrollment status (every status present, zeros included).
- `paid`: enrollments whose payment settled at some point (active, suspended, completed, revoked).
- `completion_rate`: completed / paid (0.0 with no paid enrollment), rounded to 4 places.
- `revenue`: Σ (amount_total − amount_refunded) over paid enrollments in the course's currency
  (`currency`), in minor units; `gross` and `refunded` are the two sums. A pending or failed payment
  is not revenue; a sale in another currency is in `revenue_by_currency` only.
- `revenue_by_currency`: per currency of the sales (never summed across currencies): `sales`,
  `subtotal` (Stripe's `amount_subtotal`: list price × quantity, before discounts and exclusive tax),
  `discount` (`total_details.amount_discount`), `tax` (`total_details.amount_tax`, included or added),
  `total` (what was charged), `refunded`, and `net` = total − tax − refunded: revenue net of tax,
  discounts and refunds. A 100 %-off checkout is a sale with every figure 0.
- packages (`package_report`): the same money figures over paid or refunded package purchases,
  `purchases` by status.
- `activity_by_week`: per week (Monday 00:00 UTC to the next), enrollments that became active
  (`activated_at`: paid, or enrolled by hand) and enrollments completed (`completed_at`) in it.
- per step: `booked` = enrollments whose step is booked, completed or missed now, `completed`, `missed`, and
  `skipped_ahead` = bookings of the step made while an earlier step was still unbooked (the plan's "skipped
  steps" analytics flag). The steps are counted as they stand: a revocation cancels the revoked enrollment's
  open steps (booked or missed), which leave `booked` and `missed`; its completed steps stay on record and
  counted, and `skipped_ahead` stays (a fact of the booking).
"""
from __future__ import annotations

import csv
import io
import re
from datetime import datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import case, func, or_, select, text
from sqlalchemy.orm import Session

from db.enums import EnrollmentStatus, ProgressStatus, PurchaseStatus
from db.models import CourseProgram, CourseStep, CreditPackage, PackagePurchase, StudentCourseEnrollment, StudentCourseProgress
from db.models.enrollments import COUNTED_PROGRESS, EVER_BOOKED
from db.types import utcnow
from tasks.errors import ValidationFailed
from tasks.purchases.fulfilment import SETTLED_BY
from tasks.purchases.manual import MANUAL_SESSION_PREFIX

PAID = (EnrollmentStatus.ACTIVE, EnrollmentStatus.SUSPENDED, EnrollmentStatus.COMPLETED, EnrollmentStatus.REVOKED)
PACKAGE_PAID = (PurchaseStatus.PAID, PurchaseStatus.REFUNDED)


def _a_sale():
    """SQL: an enrollment in PAID that was a sale. A revoked one was, if it was ever active or its payment settled
    after it was revoked while pending; one revoked while pending whose payment failed, or has not settled, was
    not."""
    enrollment = StudentCourseEnrollment
    return or_(enrollment.status != EnrollmentStatus.REVOKED, enrollment.activated_at.is_not(None),
               enrollment.fulfilment_metadata[SETTLED_BY].as_string().is_not(None))


def money_by_currency(session: Session, model, owner_column, owner_ids: list[int], paid,
                      *sold) -> dict[int, dict[str, dict]]:
    """{owner id: {currency: figures}} over the paid purchases of `model` (enrollments or package purchases) that
    `sold` (more conditions) admits. `net` is what was kept (total − refunded) less its share of the tax: a
    refund gives its share of the tax back too."""
    kept = model.amount_total - model.amount_refunded
    # integer arithmetic, the same on every database: the tax's share rounded half up, in minor units
    tax_kept = (model.amount_tax * kept + model.amount_total // 2) // model.amount_total
    net = case((model.amount_total > 0, kept - tax_kept), else_=kept)
    rows = session.execute(
        select(owner_column, model.currency, func.count(),
               func.coalesce(func.sum(func.coalesce(model.amount_subtotal, model.amount_total)), 0),
               func.coalesce(func.sum(model.amount_discount), 0), func.coalesce(func.sum(model.amount_tax), 0),
               func.coalesce(func.sum(model.amount_total), 0), func.coalesce(func.sum(model.amount_refunded), 0),
               func.coalesce(func.sum(net), 0))
        .where(owner_column.in_(owner_ids), model.status.in_(paid), *sold)
        .group_by(owner_column, model.currency)
    )
    out: dict[int, dict[str, dict]] = {oid: {} for oid in owner_ids}
    for oid, currency, n, subtotal, discount, tax, total, refunded, net_total in rows:
        out[oid][currency or ""] = {"sales": int(n), "subtotal": int(subtotal), "discount": int(discount),
                                    "tax": int(tax), "total": int(total), "refunded": int(refunded),
                                    "net": int(net_total)}
    return dict(out)


def _in_own_currency(by_currency: dict[str, dict], currency: str | None) -> dict[str, int]:
    """`revenue` (gross, refunded, net) of the sales in the listing's own currency (or none recorded)."""
    figures = [f for c, f in by_currency.items() if c in ("", (currency or "").lower())]
    gross = sum(f["total"] for f in figures)
    refunded = sum(f["refunded"] for f in figures)
    return {"gross": gross, "refunded": refunded, "net": gross - refunded}

CSV_COLUMNS = (
    "course_code", "course_title", "currency", "enrollments_total",
    *(f"enrollments_{s.value}" for s in EnrollmentStatus),
    "paid", "completion_rate", "revenue_gross", "revenue_refunded", "revenue_net",
    "step_position", "step_label", "step_booked", "step_completed", "step_missed", "step_skipped_ahead",
)


def counts_by_status(session: Session, owner, status_column, ids: list[int], statuses) -> dict[int, dict[str, int]]:
    """Rows per owner (course or package) and status, every status present (zeros included)."""
    counts: dict[int, dict[str, int]] = {pid: {s.value: 0 for s in statuses} for pid in ids}
    for pid, status, n in session.execute(
        select(owner, status_column, func.count()).where(owner.in_(ids)).group_by(owner, status_column)
    ):
        counts[pid][status.value] = n
    return counts


def _step_counts(session: Session, step_ids: list[int]) -> dict[int, tuple[int, int, int, int]]:
    """{step id: (booked, completed, missed, skipped ahead)}, counted by the database per step over the
    progress rows that count towards any of them (a step none counts towards is absent): on PostgreSQL from
    the partial index of those rows alone (`COUNTED_PROGRESS`), without reading the table."""
    if not step_ids:
        return {}
    progress = StudentCourseProgress
    return {step_id: counts for step_id, *counts in session.execute(
        select(progress.step_id,
               func.count().filter(progress.status.in_(EVER_BOOKED)),
               func.count().filter(progress.status == ProgressStatus.COMPLETED),
               func.count().filter(progress.status == ProgressStatus.MISSED),
               func.count().filter(progress.skipped_ahead.is_(True)))
        .where(progress.step_id.in_(step_ids), text(f"({COUNTED_PROGRESS})"))
        .group_by(progress.step_id))}


def course_report(*, session: Session) -> list[dict[str, Any]]:
    """One dict per live course (draft and published), ordered by code."""
    programs = list(session.scalars(
        select(CourseProgram).where(CourseProgram.deleted_at.is_(None)).order_by(CourseProgram.code)
    ))
    if not programs:
        return []
    ids = [p.id for p in programs]
    by_status = counts_by_status(session, StudentCourseEnrollment.program_id, StudentCourseEnrollment.status, ids,
                                 EnrollmentStatus)
    # a comp (enrolled by hand) is not a sale
    money = money_by_currency(session, StudentCourseEnrollment, StudentCourseEnrollment.program_id, ids, PAID,
                              ~StudentCourseEnrollment.stripe_checkout_session_id.startswith(MANUAL_SESSION_PREFIX),
                              _a_sale())
    never_sold = dict(session.execute(
        select(StudentCourseEnrollment.program_id, func.count())
        .where(StudentCourseEnrollment.program_id.in_(ids), StudentCourseEnrollment.status == EnrollmentStatus.REVOKED,
               ~_a_sale())
        .group_by(StudentCourseEnrollment.program_id)).all())

    steps: dict[int, list[dict[str, Any]]] = {pid: [] for pid in ids}
    live_steps = list(session.scalars(
        select(CourseStep).where(CourseStep.program_id.in_(ids), CourseStep.deleted_at.is_(None))
        .order_by(CourseStep.program_id, CourseStep.position)))
    per_step = _step_counts(session, [step.id for step in live_steps])
    for step in live_steps:
        booked, completed, missed, ahead = per_step.get(step.id, (0, 0, 0, 0))
        steps[step.program_id].append({
            "course_step_id": step.id, "label": step.label, "position": step.position, "title": step.title,
            "booked": int(booked), "completed": int(completed), "missed": int(missed), "skipped_ahead": int(ahead),
        })

    report = []
    for program in programs:
        statuses = by_status[program.id]
        paid = sum(statuses[s.value] for s in PAID) - never_sold.get(program.id, 0)
        report.append({
            "course_code": program.code,
            "title": program.title,
            "status": program.status.value,
            "currency": program.price_currency,
            "enrollments": statuses,
            "enrollments_total": sum(statuses.values()),
            "paid": paid,
            "completion_rate": round(statuses[EnrollmentStatus.COMPLETED.value] / paid, 4) if paid else 0.0,
            "revenue": _in_own_currency(money[program.id], program.price_currency),
            "revenue_by_currency": money[program.id],
            "steps": steps[program.id],
            "skipped_ahead": sum(s["skipped_ahead"] for s in steps[program.id]),
        })
    return report


def package_report(*, session: Session) -> list[dict[str, Any]]:
    """One dict per live credit package, ordered by code: purchases by status and the same money figures."""
    packages = list(session.scalars(
        select(CreditPackage).where(CreditPackage.deleted_at.is_(None)).order_by(CreditPackage.code)))
    if not packages:
        return []
    ids = [p.id for p in packages]
    by_status = counts_by_status(session, PackagePurchase.package_id, PackagePurchase.status, ids, PurchaseStatus)
    money = money_by_currency(session, PackagePurchase, PackagePurchase.package_id, ids, PACKAGE_PAID)
    return [{
        "package_code": package.code,
        "title": package.title,
        "currency": package.price_currency,
        "credit_type": package.credit_type.value,
        "quantity": package.quantity,
        "purchases": by_status[package.id],
        "purchases_total": sum(by_status[package.id].values()),
        "paid": sum(by_status[package.id][s.value] for s in PACKAGE_PAID),
        "revenue": _in_own_currency(money[package.id], package.price_currency),
        "revenue_by_currency": money[package.id],
    } for package in packages]


# A ';', tab or line break inside a text is where a spreadsheet opening the file with that separator (Excel
# in most European locales splits at ';') starts a cell, whatever the quoting: the comma file's quotes do
# not open that cell, and one a '"' opens is unquoted by it.
_CELL_STARTS_INSIDE = re.compile(r'(?<=[;\t\r\n])(?="*[=+\-@])')


def _cell(value: Any) -> Any:
    # a text cell starting with = + - @ would run as a formula in a spreadsheet: quote it, and so each part
    # of it that would start a cell where the spreadsheet splits at another separator than the comma
    if not isinstance(value, str):
        return value
    value = _CELL_STARTS_INSIDE.sub("'", value)
    if value[:1] in ("=", "+", "-", "@", "\t", "\r"):
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


MAX_WEEKS = 104


def _monday(moment: datetime) -> datetime:
    moment = moment.astimezone(timezone.utc)
    return datetime.combine(moment.date() - timedelta(days=moment.weekday()), time(0), tzinfo=timezone.utc)


def activity_by_week(*, session: Session, weeks: int = 12, now: datetime | None = None) -> list[dict[str, Any]]:
    """The last `weeks` weeks, the current one included, oldest first: `{"week": Monday, "enrollments",
    "completions"}` (every week present, zeros included)."""
    if not isinstance(weeks, int) or isinstance(weeks, bool) or not 1 <= weeks <= MAX_WEEKS:
        raise ValidationFailed(f"weeks: a whole number from 1 to {MAX_WEEKS}", field="weeks")
    start = _monday(now or utcnow()) - timedelta(weeks=weeks - 1)
    out = {start + timedelta(weeks=n): {"enrollments": 0, "completions": 0} for n in range(weeks)}
    for column, key in ((StudentCourseEnrollment.activated_at, "enrollments"),
                        (StudentCourseEnrollment.completed_at, "completions")):
        week = _week_of(session, column).label("week")
        for monday, n in session.execute(select(week, func.count()).where(column >= start).group_by(week)):
            monday = _as_monday(monday)
            if monday in out:  # a time in the future (a clock ahead) is not drawn
                out[monday][key] += n
    return [{"week": week, **counts} for week, counts in out.items()]


def _week_of(session: Session, column):
    """The Monday (00:00 UTC) of a timestamp's week, computed by the database, which counts per week (a
    studio's year of enrollments is not read row by row)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc("week", func.timezone("UTC", column))  # a naive UTC timestamp
    return func.date(column, "weekday 0", "-6 days")  # SQLite: the Sunday on or after it, less six days


def _as_monday(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite's date(): 'YYYY-MM-DD'
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc)
