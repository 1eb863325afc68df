"""The studio's dashboard pages: a student's page with the credit statement and its forms, and an
enrollment's revoke / reinstate / refund (preview first) forms."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from db.enums import BundleKind, CreditType
from db.models import AdminRefund, InboxEvent, StudentCourseEnrollment
from tasks.ledger import credits
from tasks.ledger.causes import Cause
from tests import factories
from tests.admin_support import login_as, make_admin
from tests.conftest import make_settings
from tests.tasks.purchases.payments_support import COURSE_PRICE, charge_refunded, checkout, deliver, state


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def _purchase(db, stripe_server) -> int:
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    stripe_server.add_payment_intent(id="pi_1", amount=COURSE_PRICE, currency="usd")
    deliver(db, checkout())
    with db.session_scope() as s:
        return s.scalar(select(StudentCourseEnrollment.id))


def _text(response) -> str:
    return re.sub(r"\s+", " ", response.get_data(True))


def test_student_page_statement_and_forms(client, runtime, stripe_server):
    db = runtime.db
    _purchase(db, stripe_server)
    with db.session_scope() as s:
        factories.program(s, code="ABC", bundle=((BundleKind.GROUP_CREDIT, 1),))
    make_admin(db, "op@studio.test", "operator")
    csrf = login_as(client, "op@studio.test")
    page = _text(client.get("/admin/ui/students/stu_1"))
    assert "2 private credits in the bundle of SFZ (enrollment 1)" in page and 'id="adjust-credits"' in page
    bad = client.post("/admin/ui/students/stu_1/credits", follow_redirects=True,
                      data={"csrf_token": csrf, "kind": "group", "quantity": "", "reason": "x"})
    assert "Not adjusted: quantity" in _text(bad) and state(db)["balances"]["group"] == 0
    done = client.post("/admin/ui/students/stu_1/credits", follow_redirects=True,
                       data={"csrf_token": csrf, "kind": "group", "quantity": "2", "reason": "loyalty"})
    text = _text(done)
    assert "Credits adjusted" in text and "2 group credits added by op@studio.test: loyalty" in text
    # the form's own key: pressed twice, one adjustment (before, two)
    form = dict(re.findall(r'name="(request_key)" value="([^"]*)"', client.get("/admin/ui/students/stu_1").get_data(True)))
    twice = {"csrf_token": csrf, "kind": "group", "quantity": "1", "reason": "double click", **form}
    for _ in range(2):
        client.post("/admin/ui/students/stu_1/credits", data=twice)
    assert form["request_key"].startswith("dashboard-") and state(db)["balances"]["group"] == 3
    enrolled = client.post("/admin/ui/students/stu_1/enrollments", follow_redirects=True,
                           data={"csrf_token": csrf, "course_code": "ABC", "reason": "prize"})
    assert "Enrolled in ABC" in _text(enrolled) and state(db)["balances"]["group"] == 3  # no bundle: box unticked
    assert client.get("/admin/ui/students/nobody").status_code == 404


def test_the_refund_pages_show_a_zero_decimal_currency_as_it_is_charged(client, runtime, stripe_server):
    """Before, both divided by 100: a refund of 1,200 yen was confirmed as "12.00 JPY"."""
    db = runtime.db
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),), price=3000)
    stripe_server.add_payment_intent(id="pi_1", amount=3000, currency="jpy")
    event = checkout(amount=3000)
    event["data"]["object"]["currency"] = "jpy"
    deliver(db, event)
    with db.session_scope() as s:
        enrollment_id = s.scalar(select(StudentCourseEnrollment.id))
    make_admin(db, "op@studio.test", "operator")
    csrf = login_as(client, "op@studio.test")
    preview = client.post(f"/admin/ui/enrollments/{enrollment_id}/refund",
                          data={"csrf_token": csrf, "reason": "moved away", "do": "preview", "amount": "1200"})
    text = _text(preview)
    assert "<td>1200 JPY <span" in text and "(of 3000 JPY left to refund)" in text
    form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', preview.get_data(True)))
    done = client.post(f"/admin/ui/enrollments/{enrollment_id}/refund", data={**form, "do": "refund"},
                       follow_redirects=True)
    assert "Refunded 1200 JPY" in _text(done)
    assert stripe_server.calls("POST", "/v1/refunds")[0].params["amount"] == "1200"


def test_refund_from_the_enrollment_page_previews_then_refunds_once(client, runtime, stripe_server):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    make_admin(db, "op@studio.test", "operator")
    csrf = login_as(client, "op@studio.test")
    assert 'id="refund"' in _text(client.get(f"/admin/ui/enrollments/{enrollment_id}"))
    before = state(db)
    preview = client.post(f"/admin/ui/enrollments/{enrollment_id}/refund",
                          data={"csrf_token": csrf, "reason": "moved away", "do": "preview"})
    text = _text(preview)
    assert preview.status_code == 200 and "Nothing has changed yet" in text
    assert "active → revoked" in text and "-2 private" in text and "SFZ-1: unbooked → cancelled" in text
    assert state(db) == before and stripe_server.calls("POST", "/v1/refunds") == []
    form = dict(re.findall(r'name="(\w+)" value="([^"]*)"', preview.get_data(True)))
    confirm = {**form, "do": "refund"}
    done = client.post(f"/admin/ui/enrollments/{enrollment_id}/refund", data=confirm, follow_redirects=True)
    assert "Refunded 120.00 USD" in _text(done)
    client.post(f"/admin/ui/enrollments/{enrollment_id}/refund", data=confirm)  # pressed twice
    assert len([c for c in stripe_server.calls("POST", "/v1/refunds") if not c.replayed]) == 1
    with db.session_scope() as s:
        assert len(s.scalars(select(AdminRefund)).all()) == 1
    assert state(db)["enrollments"][0]["status"] == "revoked"


def test_revoke_and_reinstate_forms_and_a_viewer_sees_no_forms(client, app, runtime, stripe_server):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    make_admin(db, "op@studio.test", "operator")
    make_admin(db, "viewer@studio.test", "viewer")
    csrf = login_as(client, "op@studio.test")
    missing = client.post(f"/admin/ui/enrollments/{enrollment_id}/revoke", data={"csrf_token": csrf},
                          follow_redirects=True)
    assert "Not done: reason" in _text(missing) and state(db)["enrollments"][0]["status"] == "active"
    client.post(f"/admin/ui/enrollments/{enrollment_id}/revoke", data={"csrf_token": csrf, "reason": "fraud"})
    assert state(db)["enrollments"][0]["status"] == "revoked"
    client.post(f"/admin/ui/enrollments/{enrollment_id}/reinstate", data={"csrf_token": csrf, "reason": "not fraud"})
    assert state(db)["enrollments"][0]["status"] == "active"
    viewer = app.test_client()
    login_as(viewer, "viewer@studio.test")
    page = _text(viewer.get(f"/admin/ui/enrollments/{enrollment_id}"))
    assert 'id="refund"' not in page and 'id="revoke-reinstate"' not in page
    # the timeline tells who did it and why, as the audit log (which a viewer reads) does
    assert "enrollment.revoke by op@studio.test" in page and "not fraud" in page
    student = _text(viewer.get("/admin/ui/students/stu_1"))
    assert 'id="statement"' in student and 'id="adjust-credits"' not in student


def test_timeline_filters_by_kind_and_refuses_an_unknown_kind(client, runtime):
    with runtime.db.session_scope() as s:
        student = factories.student(s)
        enrollment = factories.enrollment(s, student, factories.program(s), session_id="cs_filter")
        enrollment_id = enrollment.id
        credits.issue_credits(session=s, student_id=student.id, credit_type=CreditType.GROUP, quantity=3,
                              cause=Cause.bundle(enrollment_id), enrollment_id=enrollment_id)
    make_admin(runtime.db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")
    for url in (f"/admin/ui/enrollments/{enrollment_id}", "/admin/ui/students/stu_1"):
        everything = _text(client.get(url))
        assert 'class="timeline-row timeline-credit"' in everything
        page = _text(client.get(url, query_string={"kind": ["progress", "admin"]}))
        assert 'class="timeline-row timeline-credit"' not in page
        assert 'name="kind" value="progress" checked' in page and 'id="timeline-all"' in page
        bad = client.get(url, query_string={"kind": "outbox"})
        assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "validation_failed"
        assert "kind: unknown outbox" in bad.get_json()["error"]["message"]


def test_an_event_links_to_its_enrollment_and_siblings_and_back(client, runtime, stripe_server):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    other = charge_refunded(pi="pi_1", amount=COURSE_PRICE, refunded=500, refunds=(("re_side", 500),))
    deliver(db, other)
    with db.session_scope() as s:
        bought, refunded = s.scalars(select(InboxEvent.id).order_by(InboxEvent.id)).all()
    make_admin(db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")
    page = _text(client.get(f"/admin/ui/events/{bought}"))
    assert f'href="/admin/ui/enrollments/{enrollment_id}"' in page
    assert 'href="/admin/ui/students/stu_1"' in page
    assert f'href="/admin/ui/events/{refunded}"' in page  # the other event of the same payment
    back = _text(client.get(f"/admin/ui/enrollments/{enrollment_id}"))
    section = back[back.index('id="enrollment-events"'):back.index('id="timeline"')]
    assert f'href="/admin/ui/events/{bought}"' in section and f'href="/admin/ui/events/{refunded}"' in section
