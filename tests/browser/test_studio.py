"""The studio's pages in a real headless Chromium: an operator logs in with their account, finds a student
from the header's box, adjusts credits, previews and makes a goodwill refund, and reads the audit log."""
from __future__ import annotations

import json
import re

import pytest
import requests

from db.enums import BundleKind
from tests import factories
from tests.admin_support import browser_login, make_admin
from tests.browser.test_dashboard import ARTIFACTS, browser_page  # noqa: F401
from tests.conftest import drain, make_settings
from tests.netutil import http_server
from tests.signing import stripe_headers
from tests.tasks.purchases.payments_support import COURSE_PRICE, checkout


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_operator_adjusts_credits_and_refunds_keeping_access(browser_page, app, runtime, worker,  # noqa: F811
                                                             stripe_server):
    from playwright.sync_api import expect

    page = browser_page
    with runtime.db.session_scope() as s:
        factories.program(s, code="SFZ", price=COURSE_PRICE, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    make_admin(runtime.db, "op@studio.test", "operator")
    stripe_server.add_payment_intent(id="pi_studio", amount=COURSE_PRICE, currency="usd")
    with http_server(app) as base:
        body = json.dumps(checkout(cs="cs_studio_1", pi="pi_studio", student="stu_studio", amount=COURSE_PRICE))
        assert requests.post(f"{base}/webhooks/stripe", data=body, headers=stripe_headers(body),
                             timeout=10).status_code == 200
        drain(runtime)

        browser_login(page, base, "op@studio.test")
        expect(page.locator("#who")).to_have_text("op@studio.test · operator")

        page.fill("#find input[name=q]", "pi_studio")
        page.press("#find input[name=q]", "Enter")
        expect(page.locator("#found-enrollments")).to_contain_text("cs_studio_1")
        page.locator("#found-enrollments").get_by_role("link", name="stu_studio").click()
        expect(page.locator("#statement")).to_contain_text("2 private credits in the bundle of SFZ")

        form = page.locator("#adjust-credits")
        form.locator("select[name=kind]").select_option("group")
        form.locator("input[name=quantity]").fill("3")
        form.locator("input[name=reason]").fill("welcome back")
        form.get_by_role("button", name="Adjust").click()
        expect(page.locator(".flash.ok")).to_contain_text("Credits adjusted")
        expect(page.locator("#statement")).to_contain_text("3 group credits added by op@studio.test: welcome back")
        page.screenshot(path=str(_artifact("studio-student.png")), full_page=True)

        page.locator("#enrollments").get_by_role("link", name=re.compile(r"^\d+$")).first.click()
        refund = page.locator("#refund")
        refund.locator("input[name=keep_access]").check()
        refund.locator("input[name=reason]").fill("teacher was ill")
        refund.get_by_role("button", name="Preview the refund").click()
        expect(page.locator("#preview-status")).to_have_text("active → active")
        expect(page.locator("#preview-credits")).to_have_text("no change")
        page.screenshot(path=str(_artifact("studio-refund-preview.png")), full_page=True)
        page.get_by_role("button", name="Refund through Stripe").click()
        expect(page.locator(".flash.ok")).to_contain_text("Refunded 120.00 USD")
        expect(page.locator("#enrollment-status")).to_have_text("active")

        page.get_by_role("link", name="Audit log").click()
        rows = page.locator("tr.audit-entry")
        expect(rows).to_have_count(2)
        expect(rows.first).to_contain_text("enrollment.refund")
        expect(rows.first).to_contain_text("teacher was ill")
        page.screenshot(path=str(_artifact("studio-audit.png")), full_page=True)
    assert len(stripe_server.calls("POST", "/v1/refunds")) == 1


def _artifact(name: str):
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
