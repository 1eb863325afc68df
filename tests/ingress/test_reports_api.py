"""GET /admin/reports/courses: JSON with the bearer token, CSV with ?format=csv."""
from __future__ import annotations

import csv
import io

from db.enums import EnrollmentStatus
from tests.conftest import ADMIN_TOKEN
from tests import factories
from tests.ingress.test_dashboard import login


def _seed(runtime):
    with runtime.db.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2, price=12000)
        student = factories.student(s)
        factories.enrollment(s, student, program, session_id="cs_r_1")
        other = factories.student(s, id="stu_2", email="s2@example.test")
        refunded = factories.enrollment(s, other, program, status=EnrollmentStatus.REVOKED, session_id="cs_r_2")
        refunded.amount_refunded = 12000


def test_json_shape(client, runtime, admin_headers):
    _seed(runtime)
    response = client.get("/admin/reports/courses", headers=admin_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert {"generated_at", "courses"} <= set(body)
    (course,) = body["courses"]
    assert {"course_code", "title", "status", "currency", "enrollments", "enrollments_total", "paid",
            "completion_rate", "revenue", "steps", "skipped_ahead"} <= set(course)
    assert course["course_code"] == "SFZ" and course["enrollments"]["active"] == 1
    assert course["enrollments"]["revoked"] == 1 and course["completion_rate"] == 0.0
    assert course["revenue"] == {"gross": 24000, "refunded": 12000, "net": 12000}
    assert [(s["label"], s["position"]) for s in course["steps"]] == [("SFZ-1", 1), ("SFZ-2", 2)]
    assert set(course["steps"][0]) >= {"course_step_id", "booked", "completed", "missed", "skipped_ahead"}


def test_csv(client, runtime, admin_headers):
    _seed(runtime)
    response = client.get("/admin/reports/courses?format=csv", headers=admin_headers)
    assert response.status_code == 200 and response.content_type.startswith("text/csv")
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(True))))
    assert [(r["course_code"], r["step_label"], r["revenue_net"]) for r in rows] == [
        ("SFZ", "SFZ-1", "12000"), ("SFZ", "SFZ-2", "12000")]


def test_needs_the_token_or_a_dashboard_session(client, runtime):
    assert client.get("/admin/reports/courses").status_code == 401
    assert client.get("/admin/reports/courses", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/admin/reports/courses?format=xml",
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 400
    login(client)
    assert client.get("/admin/reports/courses?format=csv").status_code == 200
    page = client.get("/admin/ui/reports").get_data(True)
    assert "Download CSV" in page and 'data-course' not in page  # no courses yet
