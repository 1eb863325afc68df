"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright; no browser download).

The app is served over real HTTP with the embedded runtime and worker threads. On failure the page
is saved as a screenshot under test-artifacts/. Outside CI a missing chromium skips with one line;
with CI=true it fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from db.enums import InboxStatus
from db.models import InboxEvent
from tests import factories
from tests.admin_support import browser_login, make_admin
from tests.conftest import ADMIN_TOKEN, IN_CI, drain
from tests.netutil import http_server
from tests.signing import stripe_headers
from tests.tasks.purchases.payments_support import checkout

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


def _chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path, problem = None, "the playwright package is not installed (pip install -e '.[test]')"
    else:
        problem = "chromium not found (apt-get install chromium, or run `make test`)"
    if path is None:
        if IN_CI:
            pytest.fail(problem)
        pytest.skip(problem)
    return path


@pytest.fixture
def browser_page(request):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            yield page
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is None or report.failed:
                ARTIFACTS.mkdir(exist_ok=True)
                name = re.sub(r"[^\w.-]+", "_", request.node.name)
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            browser.close()


@pytest.mark.parametrize("db_backend", ["sqlite"])  # one backend is enough here: the pages are the subject
def test_login_replay_refulfil_report(browser_page, app, runtime, worker):
    from playwright.sync_api import expect

    page = browser_page
    with http_server(app) as base:
        # a purchase of a course that does not exist yet fails permanently: the admin's case for Replay
        body = json.dumps(checkout(cs="cs_browser_1", pi="pi_browser_1", student="stu_browser", amount=12000))
        assert requests.post(f"{base}/webhooks/stripe", data=body, headers=stripe_headers(body),
                             timeout=10).status_code == 200
        drain(runtime)
        with runtime.db.session_scope() as s:
            event = s.scalar(select(InboxEvent))
            assert event.status is InboxStatus.FAILED
            inbox_id = event.id
            factories.program(s, code="SFZ", price=12000)  # the fix

        page.goto(f"{base}/admin/")
        expect(page).to_have_url(re.compile(r"/admin/login"))
        page.fill("input[name=password]", "wrong-token")
        page.click("button[type=submit]")
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        page.fill("input[name=password]", ADMIN_TOKEN)
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Operations")

        row = page.locator(f"#problems tr[data-inbox-id='{inbox_id}']")
        expect(row).to_contain_text("unknown course")
        expect(row.locator(".status")).to_have_text("failed")
        row.get_by_role("button", name="Replay").click()
        expect(page).to_have_url(re.compile(rf"/admin/ui/events/{inbox_id}$"))
        expect(page.locator("#event-status")).to_have_text("processed")  # the page refreshes until then

        page.get_by_role("link", name="Dashboard").click()
        expect(page.locator("#problems")).to_contain_text("Nothing failed or waiting.")
        page.fill("#enrollments input[name=q]", "stu_browser")
        page.get_by_role("button", name="Search").click()
        enrollment_row = page.locator("#enrollments tr[data-enrollment-id]")
        expect(enrollment_row).to_have_count(1)
        expect(enrollment_row).to_contain_text("cs_browser_1")
        enrollment_row.get_by_role("button", name="Re-fulfil").click()
        expect(page.locator(".flash.ok")).to_contain_text("nothing was missing")
        expect(page.locator("#enrollment-status")).to_have_text("active")
        expect(page.locator("#timeline")).to_contain_text("stripe checkout.session.completed (processed)")

        page.get_by_role("link", name="Course report").click()
        course = page.locator("#report tr[data-course='SFZ']")
        expect(course).to_contain_text("active 1")
        expect(course.locator(".revenue-net")).to_have_text("120.00 USD")
        csv = page.request.get(base + page.locator("#csv-link").get_attribute("href"))  # with the session cookie
        assert csv.status == 200 and csv.text().startswith("course_code,")


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_an_admin_whose_domain_is_beyond_ascii_logs_in(browser_page, app, database):
    """The e-mail field submits an internationalised domain as A-labels (`xn--…`) whatever was typed, and
    the account added with its domain in Unicode is the one that form names."""
    from playwright.sync_api import expect

    make_admin(database, "ann@exämple.test", "viewer")
    page = browser_page
    with http_server(app) as base:
        browser_login(page, base, "Ann@ExÄmple.test")
        expect(page.locator("h1")).to_have_text("Operations")
        expect(page.locator("body")).to_contain_text("ann@xn--exmple-cua.test")
