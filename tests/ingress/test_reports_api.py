"""GET /admin/reports/courses: JSON with the bearer token, CSV with ?format=csv."""
from __future__ import annotations

import csv
import io
import re

from db.enums import CreditType, EnrollmentStatus, PurchaseStatus
from db.models import CreditPackage, PackagePurchase
from db.types import utcnow
from tests.admin_support import login_as, make_admin
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
        refunded.activated_at = utcnow()  # a sale: active before its refund


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


def test_reports_page_draws_the_weekly_chart_and_lists_packages(client, runtime):
    with runtime.db.session_scope() as s:
        program = factories.program(s)
        student = factories.student(s)
        enrollment = factories.enrollment(s, student, program, session_id="cs_chart")
        enrollment.activated_at = utcnow()
        package = CreditPackage(code="TEN", title="Ten group classes", price_amount=9000, price_currency="usd",
                                credit_type=CreditType.GROUP, quantity=10)
        s.add(package)
        s.flush()
        s.add(PackagePurchase(student_id=student.id, package_id=package.id, status=PurchaseStatus.PAID,
                              stripe_checkout_session_id="cs_pkg", amount_total=9000, currency="usd"))
    make_admin(runtime.db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")
    response = client.get("/admin/ui/reports")
    page = response.get_data(True)
    assert response.status_code == 200 and "script-src" not in response.headers["Content-Security-Policy"]
    assert '<svg xmlns="http://www.w3.org/2000/svg" id="activity-chart" role="img"' in page
    assert len(re.findall(r'<rect class="bar enrollments"', page)) == 12
    assert re.search(r'<rect class="bar enrollments" data-week="[\d-]+" data-value="1"', page)
    assert "<script" not in page
    row = re.search(r'<tr data-package="TEN">(.*?)</tr>', page, re.S).group(1)
    assert "paid 1" in row and "90.00 USD" in row and "10 group" in row
    four = client.get("/admin/ui/reports?weeks=4").get_data(True)
    assert len(re.findall(r'<rect class="bar completions"', four)) == 4
    bad = client.get("/admin/ui/reports?weeks=lots")
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "validation_failed"
