"""The ops view in a real headless Chromium: a viewer reads an enrollment's timeline and filters it by kind,
follows an event's links to its enrollment and to the other events of its payment, and reads the reports
page with its weekly chart and the packages. Screenshots of each page go to /tmp/shots-ops/."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select

from db.enums import BundleKind, CreditType, EnrollmentStatus, PurchaseStatus
from db.models import CourseProgram, CourseStep, CreditPackage, OutboxMessage, PackagePurchase, StudentCourseEnrollment
from db.types import utcnow
from tests import factories
from tests.admin_support import browser_login, make_admin
from tests.browser.test_dashboard import browser_page  # noqa: F401
from tests.conftest import drain
from tests.netutil import http_server
from tests.signing import platform_event, platform_headers, stripe_headers
from tests.tasks.purchases.payments_support import COURSE_PRICE, charge_refunded, checkout

SHOTS = Path("/tmp/shots-ops")


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _post(base: str, path: str, event: dict, headers) -> None:
    body = json.dumps(event)
    response = requests.post(f"{base}{path}", data=body, headers=headers(body.encode() if "platform" in path else body),
                             timeout=10)
    assert response.status_code == 200, response.text


def _history(runtime) -> None:
    """Earlier students, so the chart has weeks to show: enrolled and completed over the last weeks."""
    now = utcnow()
    with runtime.db.session_scope() as s:
        sfz = s.scalar(select(CourseProgram).where(CourseProgram.code == "SFZ"))
        for n, (enrolled_weeks_ago, completed_weeks_ago) in enumerate(
                [(9, 5), (8, 4), (8, None), (6, 2), (5, 1), (4, None), (3, 0), (2, None), (1, None), (1, None)]):
            student = factories.student(s, id=f"stu_past_{n}", email=f"past{n}@example.test")
            row = factories.enrollment(s, student, sfz, session_id=f"cs_past_{n}", with_progress=False,
                                       status=EnrollmentStatus.COMPLETED if completed_weeks_ago is not None
                                       else EnrollmentStatus.ACTIVE)
            row.activated_at = now - timedelta(weeks=enrolled_weeks_ago, hours=n)
            if completed_weeks_ago is not None:
                row.completed_at = now - timedelta(weeks=completed_weeks_ago, hours=n)
        package = CreditPackage(code="TEN", title="Ten group classes", price_amount=9000, price_currency="usd",
                                credit_type=CreditType.GROUP, quantity=10)
        s.add(package)
        s.flush()
        for n, status in enumerate((PurchaseStatus.PAID, PurchaseStatus.PAID, PurchaseStatus.REFUNDED)):
            s.add(PackagePurchase(student_id=f"stu_past_{n}", package_id=package.id, status=status,
                                  stripe_checkout_session_id=f"cs_pkg_{n}", amount_total=9000, currency="usd",
                                  amount_refunded=9000 if status is PurchaseStatus.REFUNDED else 0))


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_timeline_filter_links_and_the_reports_chart(browser_page, app, runtime, worker):  # noqa: F811
    from playwright.sync_api import expect

    page = browser_page
    page.set_viewport_size({"width": 1280, "height": 900})
    with runtime.db.session_scope() as s:
        factories.program(s, code="SFZ", steps=3, price=COURSE_PRICE, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        for position in (1, 2, 3):
            factories.group_class(s, id=f"gc_SFZ_{position}_0", title=f"Salsa {position}",
                                  starts_in=timedelta(days=position))
    make_admin(runtime.db, "viewer@studio.test", "viewer")
    with http_server(app) as base:
        _post(base, "/webhooks/stripe", checkout(cs="cs_ops_1", pi="pi_ops", student="stu_ops"), stripe_headers)
        drain(runtime)
        with runtime.db.session_scope() as s:
            enrollment_id = s.scalar(select(StudentCourseEnrollment.id))
            first_step = s.scalar(select(CourseStep.id).where(CourseStep.position == 1))
        _post(base, "/webhooks/platform", platform_event("booking.created", {
            "booking_id": "bk_ops_1", "student_id": "stu_ops", "class_id": "gc_SFZ_1_0",
            "course_step_id": first_step}), platform_headers)
        drain(runtime)
        _post(base, "/webhooks/platform", platform_event("attendance.marked", {
            "booking_id": "bk_ops_1", "outcome": "attended", "marked_at": utcnow().isoformat()}), platform_headers)
        _post(base, "/webhooks/stripe", charge_refunded(pi="pi_ops", amount=COURSE_PRICE, refunded=1000,
                                                        refunds=(("re_ops", 1000),)), stripe_headers)
        drain(runtime)
        _history(runtime)

        browser_login(page, base, "viewer@studio.test")
        expect(page.locator("#who")).to_have_text("viewer@studio.test · viewer")

        # the enrollment's timeline: step labels, one row per message, a filter by kind
        page.goto(f"{base}/admin/ui/enrollments/{enrollment_id}")
        timeline = page.locator("#timeline")
        expect(timeline).to_contain_text("SFZ-1: unbooked → booked")
        expect(timeline).to_contain_text("SFZ-1: booked → completed")
        with runtime.db.session_scope() as s:  # one row per message (none configured to leave: all pending)
            messages = s.scalar(select(func.count()).select_from(OutboxMessage)
                                .where(OutboxMessage.enrollment_id == enrollment_id))
        expect(timeline.locator("tr.timeline-message")).to_have_count(messages)
        expect(timeline.locator("tr.timeline-message").first).to_contain_text("enrollment.created: pending")
        _shot(page, "enrollment-timeline.png")
        form = page.locator("#timeline-filter")
        form.get_by_label("progress").check()
        form.get_by_label("credits").check()
        form.get_by_role("button", name="Filter").click()
        expect(page).to_have_url(re.compile(r"kind=progress&kind=credit"))
        rows = page.locator("#timeline tr.timeline-row")
        expect(rows.first).to_be_visible()
        kinds = set(rows.evaluate_all("rows => rows.map(r => r.className)"))
        assert kinds <= {"timeline-row timeline-progress", "timeline-row timeline-credit"}, kinds
        assert len(kinds) == 2
        expect(page.locator("#timeline-filter input[value=progress]")).to_be_checked()
        _shot(page, "enrollment-timeline-filtered.png")
        page.locator("#timeline-all").click()
        expect(page.locator("#timeline tr.timeline-message").first).to_be_visible()

        # the enrollment's events → an event → its enrollment and the other events of its payment
        page.locator("#enrollment-events").get_by_role("link").last.click()  # the oldest: the purchase
        expect(page.locator("h1")).to_contain_text("checkout.session.completed")
        expect(page.locator("#related-enrollments")).to_contain_text(f"{enrollment_id} (SFZ, active)")
        expect(page.locator("#effects")).to_contain_text(f"enrollment {enrollment_id}: ∅ → active")
        siblings = page.locator("#related-events")
        expect(siblings).to_contain_text("charge.refunded")
        expect(siblings).to_contain_text("booking.created")
        _shot(page, "event-related.png")
        siblings.get_by_role("row").filter(has_text="charge.refunded").get_by_role("link").click()
        expect(page.locator("h1")).to_contain_text("charge.refunded")
        page.locator("#related-enrollments").get_by_role("link", name=re.compile(rf"^{enrollment_id} ")).click()
        expect(page).to_have_url(re.compile(rf"/admin/ui/enrollments/{enrollment_id}$"))

        # the student's timeline, each row saying its enrollment
        page.locator("h1").get_by_role("link", name="stu_ops").click()
        expect(page.locator("#timeline tr.timeline-progress").first).to_contain_text(f"{enrollment_id} SFZ")
        _shot(page, "student-timeline.png")

        # the reports page: the weekly chart and the packages
        page.get_by_role("link", name="Course report").click()
        chart = page.locator("#activity-chart")
        expect(chart).to_be_visible()
        expect(chart.locator("rect.bar.enrollments")).to_have_count(12)
        assert sum(int(v) for v in chart.locator("rect.bar.enrollments").evaluate_all(
            "bars => bars.map(b => b.dataset.value)")) == 11  # ten earlier students and this one
        box = chart.bounding_box()
        assert box["width"] > 600 and box["height"] > 200
        expect(page.locator("#activity-totals")).to_have_text("11 enrollments, 5 completions")
        package = page.locator("#packages tr[data-package='TEN']")
        expect(package).to_contain_text("paid 2")
        expect(package).to_contain_text("refunded 1")
        expect(package.locator(".revenue-net")).to_have_text("180.00 USD")
        _shot(page, "reports.png")
        page.locator("#weeks-form select[name=weeks]").select_option("4")
        page.locator("#weeks-form").get_by_role("button", name="Show").click()
        expect(page).to_have_url(re.compile(r"weeks=4"))
        expect(page.locator("#activity-chart rect.bar.completions")).to_have_count(4)
        _shot(page, "reports-4-weeks.png")
