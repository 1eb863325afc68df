"""The course builder in a real headless Chromium: an owner builds a course from scratch (steps, options
picked from the mirrored classes, order, bundle), publishes it through the local Stripe server, changes
the published course seeing the what-if first and confirms; creates and publishes a package. A viewer
sees the same pages without a form, and a form posted anyway answers 403.

Screenshots of each page go to $SHOTS_DIR (test-artifacts/ by default)."""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from db.enums import BookingStatus
from db.models import Booking, CourseProgram, CourseStep, StudentCourseEnrollment
from tests import factories
from tests.admin_support import browser_login, make_admin
from tests.browser.test_dashboard import ARTIFACTS, browser_page  # noqa: F401
from tests.conftest import drain, make_settings
from tests.netutil import http_server

SHOTS = Path(os.environ.get("SHOTS_DIR") or ARTIFACTS)


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _labels(page) -> list[str]:
    return page.locator("#steps .step-label").all_inner_texts()


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the pages are the subject; the domain runs on both elsewhere
def test_owner_builds_publishes_and_changes_a_course_viewer_reads_only(browser_page, app, runtime, worker,  # noqa: F811
                                                                      stripe_server):
    from playwright.sync_api import expect

    page = browser_page
    with runtime.db.session_scope() as s:
        for n, (cid, title) in enumerate([("gc_tue", "Tuesday evening group"), ("gc_wed", "Wednesday group"),
                                          ("gc_sat", "Saturday morning group")]):
            factories.group_class(s, id=cid, title=title, starts_in=timedelta(days=3 + n), capacity=10,
                                  seats_taken=2 + n)
    make_admin(runtime.db, "owner@studio.test", "owner")
    make_admin(runtime.db, "viewer@studio.test", "viewer")
    with http_server(app) as base:
        browser_login(page, base, "owner@studio.test")
        page.locator("header").get_by_role("link", name="Catalog").click()
        new = page.locator("#new-course")
        new.locator("input[name=code]").fill("SFZ")
        new.locator("input[name=title]").fill("Sforzando: accents in ensemble playing")
        new.locator("input[name=price]").fill("120.00")
        new.locator("input[name=first_step]").fill("SFZ-1")
        new.get_by_role("button", name="New course").click()
        expect(page.locator(".flash.ok")).to_contain_text("Course SFZ created as a draft")
        expect(page.locator("#course-status")).to_have_text("draft")

        for label, title in (("SFZ-2", "Release"), ("SFZ-3", "Together")):
            add = page.locator("#add-step")
            add.locator("input[name=label]").fill(label)
            add.locator("input[name=title]").fill(title)
            add.get_by_role("button", name="Add step").click()
            expect(page.locator(".flash.ok")).to_contain_text(f"add step {label}")
        for label, class_id in (("SFZ-1", "gc_tue"), ("SFZ-2", "gc_wed"), ("SFZ-3", "gc_sat")):
            row = page.locator(f"tr.step-row[data-label='{label}']")
            row.locator("select[name=class_id]").select_option(class_id)
            row.get_by_role("button", name="Attach").click()
            expect(page.locator(f"tr.step-row[data-label='{label}']")).to_contain_text(class_id)
        expect(page.locator("tr.step-row[data-label='SFZ-1']")).to_contain_text("8 seats left")
        page.locator("tr.step-row[data-label='SFZ-3']").get_by_role("button", name="↑ up").click()
        expect(page.locator(".flash.ok")).to_contain_text("move step SFZ-3 up")
        assert _labels(page) == ["SFZ-1", "SFZ-3", "SFZ-2"]
        bundle = page.locator("#bundle")
        bundle.locator("input[name=private_credit]").fill("2")
        bundle.get_by_role("button", name="Save bundle").click()
        expect(page.locator(".flash.ok")).to_contain_text("Saved: change the bundle")
        expect(page.locator("#bundle input[name=private_credit]")).to_have_value("2")
        _shot(page, "catalog-builder-draft.png")

        page.locator("#stripe").get_by_role("button", name="Publish course to Stripe").click()
        expect(page.locator(".flash.ok")).to_contain_text("Publishing course SFZ")
        drain(runtime)
        page.reload()
        expect(page.locator("#course-status")).to_have_text("published")
        expect(page.locator("#stripe-product")).to_contain_text("prod_")
        expect(page.locator("#stripe-price")).to_contain_text("price_")
        expect(page.locator("#stripe-status")).to_contain_text("in sync")
        _shot(page, "catalog-builder-published.png")

        with runtime.db.session_scope() as s:  # a student buys it (the purchase path has tests of its own)
            program = s.scalar(select(CourseProgram).where(CourseProgram.code == "SFZ"))
            factories.enrollment(s, factories.student(s, id="stu_ann", email="ann@example.test", name="Ann"),
                                 program)
        page.locator("tr.step-row[data-label='SFZ-2']").get_by_role("button", name="↑ up").click()
        expect(page.locator("h1")).to_contain_text("move step SFZ-2 up? Nothing has changed yet.")
        expect(page.locator("#whatif-count")).to_have_text("1")
        expect(page.locator("#whatif-enrollments")).to_contain_text("stu_ann")
        expect(page.locator("#whatif-enrollments")).to_contain_text("step SFZ-2: position 3 → 2 (unbooked; kept)")
        _shot(page, "catalog-whatif.png")
        page.locator("#confirm input[name=reason]").fill("Wednesday group runs before Saturday")
        page.get_by_role("button", name="Confirm: move step SFZ-2 up").click()
        expect(page.locator(".flash.ok")).to_contain_text("Saved: move step SFZ-2 up (1 enrollment(s) affected)")
        assert _labels(page) == ["SFZ-1", "SFZ-2", "SFZ-3"]

        details = page.locator("#details")  # a new price: new purchases only, once published again
        details.locator("input[name=price]").fill("135.00")
        details.get_by_role("button", name="Save details").click()
        expect(page.locator("#whatif-fields")).to_contain_text("120.00 EUR → 135.00 EUR")
        expect(page.locator("#whatif-count")).to_have_text("0")
        page.get_by_role("button", name="Confirm: change the title, price or time zone").click()
        expect(page.locator("#stripe-status")).to_contain_text("changed since publish")

        with runtime.db.session_scope() as s:  # Ann books the Tuesday class for SFZ-1
            enrollment = s.scalar(select(StudentCourseEnrollment))
            step = s.scalar(select(CourseStep).where(CourseStep.label == "SFZ-1"))
            s.add(Booking(id="bk_ann_tue", student_id="stu_ann", class_id="gc_tue", course_step_id=step.id,
                          enrollment_id=enrollment.id, status=BookingStatus.ACTIVE))
        page.locator("tr.step-row[data-label='SFZ-1']").get_by_role("button", name="detach").click()
        expect(page.locator("#whatif-verdict")).to_have_text("refused")
        expect(page.locator(".blocked")).to_contain_text("class 'gc_tue' of step 'SFZ-1' cannot be removed")
        expect(page.locator("#whatif-options")).to_contain_text("bk_ann_tue")
        expect(page.locator("#confirm")).to_have_count(0)
        _shot(page, "catalog-whatif-refused.png")
        page.get_by_role("link", name="Back to the course").click()
        expect(page.locator("tr.step-row[data-label='SFZ-1']")).to_contain_text("gc_tue")

        page.locator("header").get_by_role("link", name="Catalog").click()
        new = page.locator("#new-package")
        new.locator("input[name=code]").fill("TEN")
        new.locator("input[name=title]").fill("Ten group classes")
        new.locator("input[name=validity_days]").fill("180")
        new.locator("input[name=price]").fill("150.00")
        new.get_by_role("button", name="New package").click()
        expect(page.locator(".flash.ok")).to_contain_text("Package TEN created")
        page.locator("#stripe").get_by_role("button", name="Publish package to Stripe").click()
        expect(page.locator(".flash.ok")).to_contain_text("Publishing package TEN")  # queued before the drain
        drain(runtime)
        page.reload()
        expect(page.locator("#package-status")).to_have_text("published")
        expect(page.locator("#stripe-price")).to_contain_text("price_")
        _shot(page, "catalog-package.png")
        page.locator("header").get_by_role("link", name="Catalog").click()
        expect(page.locator("tr.course-row")).to_contain_text("published")
        expect(page.locator("tr.package-row")).to_contain_text("published")
        _shot(page, "catalog-list.png")

        page.locator("header").get_by_role("link", name="Audit log").click()
        expect(page.locator("tr.audit-entry").first).to_contain_text("package.publish")
        expect(page.locator("#content, main")).to_contain_text("Wednesday group runs before Saturday")

        page.get_by_role("button", name="Log out").click()
        expect(page.locator("input[name=email]")).to_be_visible()
        browser_login(page, base, "viewer@studio.test")
        page.locator("header").get_by_role("link", name="Catalog").click()
        expect(page.locator("#read-only")).to_be_visible()
        page.get_by_role("link", name="SFZ").click()
        expect(page.locator("#steps")).to_be_visible()
        expect(page.locator("#read-only")).to_be_visible()
        assert _labels(page) == ["SFZ-1", "SFZ-2", "SFZ-3"]
        expect(page.locator("main form")).to_have_count(0)  # nothing to press
        _shot(page, "catalog-builder-viewer.png")
        csrf = page.locator("header input[name=csrf_token]").get_attribute("value")
        for path, form in ((f"{base}/admin/ui/catalog/courses/SFZ/edit", {"edit": "move", "label": "SFZ-2",
                                                                          "direction": "up"}),
                           (f"{base}/admin/ui/catalog/courses/SFZ/publish", {}),
                           (f"{base}/admin/ui/catalog/packages/TEN", {"title": "Cheap", "kind": "group",
                                                                      "quantity": "10", "price": "1.00"})):
            answer = page.request.post(path, form={"csrf_token": csrf, **form}, max_redirects=0)
            assert answer.status == 403, path
        page.reload()
        assert _labels(page) == ["SFZ-1", "SFZ-2", "SFZ-3"]
    assert len(stripe_server.calls("POST", "/v1/products")) == 2
