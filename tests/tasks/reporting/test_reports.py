"""The course report: enrollments by status, completion, revenue net of refunds, the step funnel; CSV."""
from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest

from db.enums import EnrollmentStatus, ProgressStatus
from db.models import StudentCourseProgress
from tasks.errors import ValidationFailed
from tasks.reporting import reports
from tests import factories
from tests.plans import plans_of

E, P = EnrollmentStatus, ProgressStatus


def _set_progress(session, enrollment, statuses, ahead=()):
    rows = sorted(session.query(StudentCourseProgress).filter_by(enrollment_id=enrollment.id),
                  key=lambda p: p.step_id)
    for n, (row, status) in enumerate(zip(rows, statuses)):
        row.status = status
        row.skipped_ahead = n in ahead
    session.flush()


def _seed(session):
    sfz = factories.program(session, code="SFZ", steps=3, price=10000)
    factories.program(session, code="EMPTY", steps=0, price=5000)
    students = [factories.student(session, id=f"stu_{n}", email=f"s{n}@example.test") for n in range(6)]
    active = factories.enrollment(session, students[0], sfz, session_id="cs_1")
    _set_progress(session, active, [P.COMPLETED, P.BOOKED, P.UNBOOKED])
    done = factories.enrollment(session, students[1], sfz, status=E.COMPLETED, session_id="cs_2")
    _set_progress(session, done, [P.COMPLETED, P.COMPLETED, P.COMPLETED])
    ahead = factories.enrollment(session, students[2], sfz, session_id="cs_3")
    _set_progress(session, ahead, [P.UNBOOKED, P.UNBOOKED, P.BOOKED], ahead=(2,))
    refunded = factories.enrollment(session, students[3], sfz, status=E.REVOKED, session_id="cs_4")
    refunded.amount_refunded = 10000
    refunded.activated_at = datetime(2026, 11, 2, tzinfo=timezone.utc)  # a sale: active before its refund
    _set_progress(session, refunded, [P.MISSED, P.CANCELLED, P.CANCELLED])
    partly = factories.enrollment(session, students[4], sfz, session_id="cs_5")
    partly.amount_refunded = 2500
    factories.enrollment(session, students[5], sfz, status=E.PENDING, session_id="cs_6")  # not revenue
    session.flush()


def test_course_report(session):
    _seed(session)
    report = {c["course_code"]: c for c in reports.course_report(session=session)}
    assert list(report) == ["EMPTY", "SFZ"]
    sfz = report["SFZ"]
    assert sfz["enrollments"] == {"pending": 1, "active": 3, "suspended": 0, "revoked": 1, "completed": 1,
                                  "failed": 0}
    assert sfz["enrollments_total"] == 6 and sfz["paid"] == 5
    assert sfz["completion_rate"] == 0.2
    assert sfz["revenue"] == {"gross": 50000, "refunded": 12500, "net": 37500}
    assert [(s["label"], s["booked"], s["completed"], s["missed"], s["skipped_ahead"]) for s in sfz["steps"]] == [
        ("SFZ-1", 3, 2, 1, 0), ("SFZ-2", 2, 1, 0, 0), ("SFZ-3", 2, 1, 0, 1),
    ]
    assert sfz["skipped_ahead"] == 1
    empty = report["EMPTY"]
    assert empty["enrollments_total"] == 0 and empty["completion_rate"] == 0.0 and empty["steps"] == []
    assert empty["revenue"] == {"gross": 0, "refunded": 0, "net": 0}


def test_report_csv_has_one_row_per_course_step(session):
    _seed(session)
    text = reports.report_csv(reports.course_report(session=session))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(reports.CSV_COLUMNS)
    assert [(r["course_code"], r["step_label"]) for r in rows] == [
        ("EMPTY", ""), ("SFZ", "SFZ-1"), ("SFZ", "SFZ-2"), ("SFZ", "SFZ-3")]
    sfz1 = rows[1]
    assert (sfz1["revenue_net"], sfz1["completion_rate"], sfz1["step_booked"], sfz1["enrollments_revoked"]) == (
        "37500", "0.2000", "3", "1")


def test_csv_cells_cannot_become_spreadsheet_formulas(session):
    program = factories.program(session, code="EVIL", steps=1)
    program.title = "=HYPERLINK(\"http://x\")"
    session.flush()
    rows = list(csv.DictReader(io.StringIO(reports.report_csv(reports.course_report(session=session)))))
    assert rows[0]["course_title"].startswith("'=")


def test_no_cell_starts_a_formula_where_a_spreadsheet_splits_at_a_semicolon_tab_or_line_break(session):
    """Excel in most European locales opens a .csv splitting at ';', and the comma file's quotes do not
    hold there: every part of a text that would start a cell is quoted too."""
    program = factories.program(session, code="EVIL", steps=1)
    program.title = 'Yoga;=1+2;\t+3\n@SUM(A1);"=4+5"'
    program.steps[0].label = "Intro;-6"
    session.flush()
    text = reports.report_csv(reports.course_report(session=session))
    row = list(csv.DictReader(io.StringIO(text)))[0]
    assert (row["course_title"], row["step_label"]) == ('Yoga;\'=1+2;\t\'+3\n\'@SUM(A1);\'"=4+5"', "Intro;'-6")
    for delimiter in (",", ";", "\t"):
        cells = [cell for line in csv.reader(io.StringIO(text), delimiter=delimiter) for cell in line]
        assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")], delimiter


def test_empty_catalog(session):
    assert reports.course_report(session=session) == []
    assert reports.report_csv([]).splitlines() == [",".join(reports.CSV_COLUMNS)]


def test_activity_by_week_counts_enrollments_and_completions_per_monday(session):
    now = datetime(2026, 11, 26, 15, 0, tzinfo=timezone.utc)  # a Thursday; its week starts Monday 23rd
    sfz = factories.program(session, code="SFZ")
    moments = {  # activated, completed
        "old": (now - timedelta(weeks=20), now - timedelta(weeks=19)),  # before the window
        "a": (datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc), datetime(2026, 11, 23, 0, 0, tzinfo=timezone.utc)),
        "b": (datetime(2026, 11, 8, 23, 59, tzinfo=timezone.utc), None),  # Sunday: still the week of the 2nd
        "c": (datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc), None),
        "d": (datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc) + timedelta(weeks=3), None),  # future: not drawn
    }
    for key, (activated, completed) in moments.items():
        row = factories.enrollment(session, factories.student(session, id=f"stu_{key}", email=f"{key}@example.test"),
                                   sfz, session_id=f"cs_{key}", with_progress=False)
        row.activated_at, row.completed_at = activated, completed
    session.flush()

    weeks = reports.activity_by_week(session=session, weeks=4, now=now)
    assert [(w["week"].date().isoformat(), w["enrollments"], w["completions"]) for w in weeks] == [
        ("2026-11-02", 2, 0), ("2026-11-09", 0, 0), ("2026-11-16", 0, 0), ("2026-11-23", 1, 1)]
    assert len(reports.activity_by_week(session=session, now=now)) == 12
    for bad in (0, -1, 105, "12", True, None):
        with pytest.raises(ValidationFailed, match="weeks: a whole number from 1 to 104"):
            reports.activity_by_week(session=session, weeks=bad, now=now)


def test_step_counts_follow_the_definitions_for_every_status_and_flag(session):
    """One enrollment per (status, skipped ahead) on the course's single step: the report counts exactly the
    rows its definitions name, whatever filter the query reads them through."""
    program = factories.program(session, code="ALL", steps=1)
    combos = [(status, ahead) for status in P for ahead in (False, True)]
    for n, (status, ahead) in enumerate(combos):
        enrollment = factories.enrollment(session, factories.student(session, id=f"stu_all_{n}"), program,
                                          session_id=f"cs_all_{n}")
        _set_progress(session, enrollment, [status], ahead=(0,) if ahead else ())
    step, = {c["course_code"]: c for c in reports.course_report(session=session)}["ALL"]["steps"]
    expected = {
        "booked": sum(status in reports.EVER_BOOKED for status, _ in combos),
        "completed": sum(status is P.COMPLETED for status, _ in combos),
        "missed": sum(status is P.MISSED for status, _ in combos),
        "skipped_ahead": sum(ahead for _, ahead in combos),
    }
    assert {key: step[key] for key in expected} == expected == {"booked": 6, "completed": 2, "missed": 2,
                                                                "skipped_ahead": 5}


@pytest.mark.postgres
def test_step_counts_are_read_from_the_partial_index_alone(pg_database):
    """The per-step counts' filter is the partial index's predicate, so PostgreSQL can answer from the index
    without reading the table: a mismatch (another spelling of the predicate) makes this an ordinary scan."""
    with pg_database.session_scope() as s:
        factories.program(s, code="IX", steps=2)
        plan, = plans_of(pg_database, s, lambda: reports.course_report(session=s), naming="FROM student_course_progress")
        assert "Index Only Scan using ix_student_course_progress_counted" in plan, plan
