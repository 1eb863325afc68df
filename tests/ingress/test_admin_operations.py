"""Manual operations over HTTP: enrol by hand, credit adjustments, revoke / reinstate, refunds with a preview
and keep_access, against the local Stripe server; each with its reason in the audit log."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from db.enums import BundleKind
from db.models import AdminRefund, AuditEntry, CreditLedgerEntry, OutboxMessage, StudentCourseEnrollment
from db.types import utcnow
from tasks.purchases import manual
from tests import factories
from tests.admin_support import at_once, bearer, make_token
from tests.conftest import make_settings
from tests.tasks.purchases.payments_support import COURSE_PRICE, charge_refunded, checkout, deliver, refund_created, state
from workers import refunds as refund_calls


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


@pytest.fixture
def operator(database):
    return bearer(make_token(database, "op@studio.test", "operator"))


def _course(db, code="SFZ", bundle=((BundleKind.PRIVATE_CREDIT, 2),)):
    with db.session_scope() as s:
        factories.program(s, code=code, bundle=bundle)


def _purchase(db, stripe_server, cs="cs_1", pi="pi_1") -> int:
    _course(db)
    stripe_server.add_payment_intent(id=pi, amount=COURSE_PRICE, currency="usd")
    deliver(db, checkout(cs=cs, pi=pi))
    with db.session_scope() as s:
        return s.scalar(select(StudentCourseEnrollment.id).where(StudentCourseEnrollment.stripe_checkout_session_id == cs))


def _count(db, model) -> int:
    with db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model))


def _audit(db) -> list[tuple]:
    with db.session_scope() as s:
        return [(e.actor, e.action, e.target, e.reason) for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]


# --------------------------------------------------------------------------- enrol by hand


@pytest.mark.parametrize("grant_bundle", [True, False])
def test_the_welcome_of_an_enrollment_by_hand_lists_the_bundle_only_when_it_was_granted(database, grant_bundle):
    """Before: enrolled without the bundle, no credit was granted and the platform heard `bundle: {}`, but the
    welcome mail told the student "2 × private credits" (an empty recorded bundle read as none recorded)."""
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        factories.student(s, email="ann@example.test")
    with database.session_scope() as s:
        manual.enroll(session=s, student_id="stu_1", course_code="SFZ", grant_bundle=grant_bundle, cause="admin:1",
                      reason="a guest", actor="op@studio.test")
    with database.session_scope() as s:
        welcome = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome"))
        created = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment.created"))
    listed = [{"kind": "private_credit", "quantity": 2}] if grant_bundle else []
    assert [{k: b[k] for k in ("kind", "quantity")} for b in welcome.payload["context"]["bundle"]] == listed
    assert created.payload["data"]["bundle"] == ({"private": 2} if grant_bundle else {})


def test_enrol_by_hand_with_or_without_the_bundle(client, runtime, operator):
    db = runtime.db
    _course(db)
    _course(db, code="ABC", bundle=((BundleKind.GROUP_CREDIT, 3),))
    made = client.post("/admin/enrollments", headers=operator, json={
        "student_id": "stu_new", "course_code": "SFZ", "reason": "scholarship", "grant_bundle": True})
    assert made.status_code == 201, made.get_json()
    body = made.get_json()
    assert body["enrollment"]["status"] == "active" and len(body["enrollment"]["steps"]) == 3
    assert body["enrollment"]["credits"]["private"] == 2 and body["created"]["credits_granted"] == {"private": 2}
    bare = client.post("/admin/enrollments", headers=operator, json={
        "student_id": "stu_new", "course_code": "ABC", "reason": "teacher's guest", "grant_bundle": False})
    assert bare.status_code == 201 and bare.get_json()["enrollment"]["credits"] == {"group": 0, "private": 0}
    assert state(db, "stu_new")["balances"] == {"group": 0, "private": 2}
    with db.session_scope() as s:
        topics = set(s.scalars(select(OutboxMessage.topic)))
    assert "enrollment.created" in topics  # the platform hears of a comp as of a purchase
    assert _audit(db) == [("op@studio.test", "enrollment.create", "student:stu_new", "scholarship"),
                          ("op@studio.test", "enrollment.create", "student:stu_new", "teacher's guest")]


@pytest.mark.parametrize("body, status, code", [
    ({"student_id": "stu_1", "course_code": "SFZ", "grant_bundle": True}, 400, "validation_failed"),
    ({"student_id": "stu_1", "course_code": "SFZ", "reason": " ", "grant_bundle": True}, 400, "validation_failed"),
    ({"student_id": "stu_1", "course_code": "SFZ", "reason": "x", "grant_bundle": "yes"}, 400, "validation_failed"),
    ({"student_id": "stu_1", "course_code": "SFZ", "reason": "x", "grant_bundle": True, "free": 1}, 400,
     "validation_failed"),
    ({"student_id": "stu_1", "course_code": "NOPE", "reason": "x", "grant_bundle": True}, 404, "not_found"),
    ({"student_id": "stu_1", "course_code": "SFZ", "reason": "x", "grant_bundle": True}, 409, "already_enrolled"),
])
def test_enrol_by_hand_refuses_bad_input_and_changes_nothing(client, runtime, stripe_server, operator, body,
                                                             status, code):
    db = runtime.db
    _purchase(db, stripe_server)
    before = state(db)
    response = client.post("/admin/enrollments", headers=operator, json=body)
    assert response.status_code == status and response.get_json()["error"]["code"] == code
    assert state(db) == before and _audit(db) == []


# --------------------------------------------------------------------------- credits


def test_credit_adjustments_go_through_the_ledger(client, runtime, operator):
    db = runtime.db
    with db.session_scope() as s:
        factories.student(s)
    url = "/admin/students/stu_1/credits"
    plus = client.post(url, headers=operator, json={"kind": "group", "quantity": 3, "reason": "goodwill",
                                                    "expires_at": "2099-01-31T23:59:00+01:00"})
    assert plus.status_code == 201 and plus.get_json()["balances"]["group"] == 3
    assert plus.get_json()["entries"][0]["expires_at"].startswith("2099-01-31T22:59")
    minus = client.post(url, headers=operator, json={"kind": "group", "quantity": -2, "reason": "booked by phone"})
    assert minus.status_code == 201 and minus.get_json()["balances"]["group"] == 1
    entries = _count(db, CreditLedgerEntry)
    for body, status in (({"kind": "group", "quantity": -5, "reason": "x"}, 409),
                         ({"kind": "group", "quantity": 0, "reason": "x"}, 400),
                         ({"kind": "gold", "quantity": 1, "reason": "x"}, 400),
                         ({"kind": "group", "quantity": 1}, 400),
                         ({"kind": "group", "quantity": 1, "reason": "x", "expires_at": "2020-01-01T00:00:00+00:00"}, 400),
                         ({"kind": "group", "quantity": 1, "reason": "x", "expires_at": "tomorrow"}, 400),
                         # past the years 1 to 9999 once in UTC: refused, not an overflow
                         ({"kind": "group", "quantity": 1, "reason": "x", "expires_at": "9999-12-31T23:00:00-05:00"}, 400),
                         ({"kind": "group", "quantity": 1, "reason": "x", "expires_at": "0001-01-01T00:00:00+01:00"}, 400),
                         ({"kind": "group", "quantity": -1, "reason": "x", "expires_at": "2099-01-01T00:00:00+00:00"}, 400)):
        response = client.post(url, headers=operator, json=body)
        assert response.status_code == status, (body, response.get_json())
    assert client.post("/admin/students/nobody/credits", headers=operator,
                       json={"kind": "group", "quantity": 1, "reason": "x"}).status_code == 404
    assert client.post(f"/admin/students/{'s' * 200}/credits", headers=operator,  # longer than an audit target
                       json={"kind": "group", "quantity": 1, "reason": "x"}).status_code == 404
    assert _count(db, CreditLedgerEntry) == entries  # refused: nothing appended
    with db.session_scope() as s:
        rows = s.scalars(select(CreditLedgerEntry).order_by(CreditLedgerEntry.id)).all()
        assert [(r.entry_type.value, r.quantity) for r in rows] == [("grant", 3), ("revoke", -2)]
        audit_ids = [e.id for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        assert [r.cause for r in rows] == [f"adjustment:{audit_ids[0]}", f"adjustment:{audit_ids[1]}"]


def test_the_platforms_statement_keeps_the_reasons_and_names_no_admin(client, runtime, stripe_server, operator,
                                                                       admin_headers):
    """Every admin action that moves a student's credits (adjustments both ways, a comp with its bundle, revoke,
    reinstate, a partial refund): the read API's statement, which a student may be shown, named the admin of
    each adjustment ("added by op@studio.test: birthday"); it now says "by the studio" and keeps the reason.
    The dashboard's student page, read by admins, still names them."""
    from tests.admin_support import login_as

    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    _course(db, code="ABC", bundle=((BundleKind.GROUP_CREDIT, 3),))
    for path, body in (("/admin/students/stu_1/credits", {"kind": "group", "quantity": 2, "reason": "birthday"}),
                       ("/admin/students/stu_1/credits", {"kind": "group", "quantity": -1, "reason": "booked by phone"}),
                       ("/admin/enrollments", {"student_id": "stu_1", "course_code": "ABC", "reason": "prize",
                                               "grant_bundle": True}),
                       (f"/admin/enrollments/{enrollment_id}/revoke", {"reason": "chargeback by phone"}),
                       (f"/admin/enrollments/{enrollment_id}/reinstate", {"reason": "it was a mistake"}),
                       (f"/admin/enrollments/{enrollment_id}/refund", {"amount": COURSE_PRICE // 2,
                                                                       "keep_access": False, "reason": "half"})):
        response = client.post(path, headers=operator, json=body)
        assert response.status_code in (200, 201), (path, response.get_json())
    response = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers)
    assert response.status_code == 200
    told = response.get_data(True)
    assert "op@studio.test" not in told and "op@" not in told
    descriptions = [e["description"] for e in response.get_json()["entries"]]
    assert "2 group credits added by the studio: birthday" in descriptions
    assert "1 group credit removed by the studio: booked by phone" in descriptions
    assert "3 group credits in the bundle of ABC (enrollment 2)" in descriptions
    assert any("was revoked" in d for d in descriptions) and any("was reinstated" in d for d in descriptions)
    assert any("partial refund" in d for d in descriptions)
    login_as(client, "op@studio.test")
    page = client.get("/admin/ui/students/stu_1").get_data(True)
    assert "2 group credits added by op@studio.test: birthday" in page


# --------------------------------------------------------------------------- revoke, reinstate


def test_a_credit_adjustment_sent_again_with_its_key_is_made_once(client, runtime, operator):
    """Without a key, a script retrying after a lost answer (or a double click) granted the credits twice."""
    db = runtime.db
    with db.session_scope() as s:
        factories.student(s)
    url, body = "/admin/students/stu_1/credits", {"kind": "group", "quantity": 2, "reason": "ticket 9"}
    keyed = {**operator, "Idempotency-Key": "ticket-9"}
    first = client.post(url, headers=keyed, json=body)
    again = client.post(url, headers=keyed, json=body)
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json() and first.get_json()["balances"]["group"] == 2
    assert [a[1] for a in _audit(db)] == ["credits.adjust"]
    other = client.post(url, headers=keyed, json={**body, "quantity": 3})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    taken = client.post(url, headers={**operator, "Idempotency-Key": "ticket-10"},
                        json={"kind": "group", "quantity": -1, "reason": "ticket 10"})
    assert client.post(url, headers={**operator, "Idempotency-Key": "ticket-10"},
                       json={"kind": "group", "quantity": -1, "reason": "ticket 10"}).get_json() == taken.get_json()
    assert state(db)["balances"]["group"] == 1 and _count(db, CreditLedgerEntry) == 2
    long_key = client.post(url, headers={**operator, "Idempotency-Key": "k" * 129}, json=body)
    assert long_key.status_code == 400 and long_key.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert client.post(url, headers=operator, json=body).status_code == 201  # no key: a new adjustment each time
    assert state(db)["balances"]["group"] == 3


def test_revoke_then_reinstate_by_hand_round_trips(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    before = state(db)
    assert client.post(f"/admin/enrollments/{enrollment_id}/revoke", headers=operator, json={}).status_code == 400
    revoked = client.post(f"/admin/enrollments/{enrollment_id}/revoke", headers=operator,
                          json={"reason": "chargeback by phone"})
    assert revoked.status_code == 200
    assert revoked.get_json()["enrollment"]["status"] == "revoked"
    assert {s["status"] for s in revoked.get_json()["enrollment"]["steps"]} == {"cancelled"}
    assert state(db)["balances"]["private"] == 0
    again = client.post(f"/admin/enrollments/{enrollment_id}/revoke", headers=operator, json={"reason": "again"})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "not_allowed"
    back = client.post(f"/admin/enrollments/{enrollment_id}/reinstate", headers=operator,
                       json={"reason": "it was a mistake"})
    assert back.status_code == 200
    after = state(db)
    assert after["enrollments"][0]["status"] == "active" and after["balances"] == before["balances"]
    assert after["enrollments"][0]["steps"] == before["enrollments"][0]["steps"]  # reopened
    assert client.post(f"/admin/enrollments/{enrollment_id}/reinstate", headers=operator,
                       json={"reason": "twice"}).status_code == 409
    assert [a[1] for a in _audit(db)] == ["enrollment.revoke", "enrollment.reinstate"]


def test_an_enrollment_refunded_in_full_is_not_reinstated(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    deliver(db, charge_refunded())
    refused = client.post(f"/admin/enrollments/{enrollment_id}/reinstate", headers=operator, json={"reason": "x"})
    assert refused.status_code == 409 and "refunded in full" in refused.get_json()["error"]["message"]


def test_an_enrollment_revoked_before_its_payment_settled_is_not_reinstated(client, runtime, stripe_server,
                                                                            operator):
    """Before, the reinstatement made it active with its bundle's credits, and the payment's failure then left it
    active (only a pending enrollment fails)."""
    db = runtime.db
    _course(db)
    deliver(db, checkout(cs="cs_unpaid", pi="pi_unpaid", payment_status="unpaid"))
    with db.session_scope() as s:
        enrollment_id, status = s.execute(select(StudentCourseEnrollment.id, StudentCourseEnrollment.status)).one()
    assert status.value == "pending"
    assert client.post(f"/admin/enrollments/{enrollment_id}/revoke", headers=operator,
                       json={"reason": "asked to cancel"}).status_code == 200
    before = state(db)
    refused = client.post(f"/admin/enrollments/{enrollment_id}/reinstate", headers=operator, json={"reason": "x"})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "not_allowed"
    assert "never active" in refused.get_json()["error"]["message"]
    assert state(db) == before and before["enrollments"][0]["status"] == "revoked"
    assert before["balances"].get("private", 0) == 0


def test_reinstating_refuses_a_second_enrollment_in_the_same_course(client, runtime, stripe_server, operator):
    """Revoked, then enrolled again by hand: reinstating the first would give the student the course twice (and
    its bundle twice), which enrolling by hand refuses."""
    db = runtime.db
    first = _purchase(db, stripe_server)
    assert client.post(f"/admin/enrollments/{first}/revoke", headers=operator,
                       json={"reason": "by mistake"}).status_code == 200
    again = client.post("/admin/enrollments", headers=operator, json={
        "student_id": "stu_1", "course_code": "SFZ", "grant_bundle": True, "reason": "comp instead"})
    assert again.status_code == 201, again.get_json()
    before = state(db)
    refused = client.post(f"/admin/enrollments/{first}/reinstate", headers=operator, json={"reason": "undo"})
    assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "already_enrolled"
    assert str(again.get_json()["enrollment"]["id"]) in refused.get_json()["error"]["message"]
    assert state(db) == before and before["balances"]["private"] == 2
    assert [a[1] for a in _audit(db)] == ["enrollment.revoke", "enrollment.create"]


# --------------------------------------------------------------------------- refunds


def test_refund_preview_says_exactly_what_the_refund_then_does(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    before, ledger = state(db), _count(db, CreditLedgerEntry)
    preview = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator, json={
        "keep_access": False, "reason": "moved abroad", "preview": True})
    assert preview.status_code == 200, preview.get_json()
    told = preview.get_json()
    assert told["amount"] == COURSE_PRICE and told["enrollment_status"] == {"from": "active", "to": "revoked"}
    assert [(c["kind"], c["quantity"], c["entry_type"]) for c in told["credits"]] == [("private", -2, "revoke")]
    assert [(s["label"], s["from"], s["to"]) for s in told["steps"]] == [
        ("SFZ-1", "unbooked", "cancelled"), ("SFZ-2", "unbooked", "cancelled"), ("SFZ-3", "unbooked", "cancelled")]
    # the preview changed nothing, wrote nothing, asked Stripe nothing
    assert state(db) == before and _count(db, CreditLedgerEntry) == ledger and _count(db, AdminRefund) == 0
    assert stripe_server.calls("POST", "/v1/refunds") == [] and _audit(db) == []

    done = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator, json={
        "keep_access": False, "reason": "moved abroad"})
    assert done.status_code == 201, done.get_json()
    assert done.get_json()["refund"]["status"] == "succeeded"
    assert done.get_json()["enrollment"]["status"] == "revoked"
    [call] = stripe_server.calls("POST", "/v1/refunds")
    assert call.params["payment_intent"] == "pi_1" and call.params["amount"] == str(COURSE_PRICE)
    assert call.idempotency_key.startswith("coursepipe-refund-")
    with db.session_scope() as s:
        new = s.scalars(select(CreditLedgerEntry).order_by(CreditLedgerEntry.id).offset(ledger)).all()
        assert [(e.credit_type.value, e.quantity, e.entry_type.value) for e in new] == [("private", -2, "revoke")]
    assert state(db)["enrollments"][0]["steps"] == ["cancelled"] * 3
    assert _audit(db) == [("op@studio.test", "enrollment.refund", f"enrollment:{enrollment_id}", "moved abroad")]
    # Stripe's own events about the refund change nothing more
    refund_id = done.get_json()["refund"]["stripe_refund_id"]
    after = state(db)
    deliver(db, charge_refunded(refunds=((refund_id, COURSE_PRICE),)))
    assert state(db) == after


def test_a_goodwill_refund_keeps_access_when_stripe_reports_it(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    before = state(db)
    preview = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator, json={
        "keep_access": True, "reason": "teacher was ill", "preview": True}).get_json()
    assert preview["enrollment_status"] == {"from": "active", "to": "active"}
    assert preview["credits"] == [] and preview["steps"] == [] and preview["bookings"] == []
    done = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator, json={
        "keep_access": True, "reason": "teacher was ill"})
    assert done.status_code == 201 and done.get_json()["enrollment"]["status"] == "active"
    refund_id = done.get_json()["refund"]["stripe_refund_id"]
    # charge.refunded, with and without its list of refunds (newer API versions list none)
    deliver(db, charge_refunded(refunds=((refund_id, COURSE_PRICE),)))
    deliver(db, charge_refunded(refunds=()))
    after = state(db)
    assert after["enrollments"][0]["status"] == "active" and after["enrollments"][0]["refunded"] == COURSE_PRICE
    assert after["balances"] == before["balances"]
    with db.session_scope() as s:
        row = s.scalar(select(AdminRefund))
        assert (row.keep_access, row.status, row.stripe_refund_id, row.reason) == (True, "succeeded", refund_id,
                                                                                   "teacher was ill")
    nothing_left = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator, json={
        "keep_access": True, "reason": "again", "preview": True})
    assert nothing_left.status_code == 409 and nothing_left.get_json()["error"]["code"] == "not_refundable"


def test_a_partial_refund_and_bad_amounts(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    for amount in (0, -5, COURSE_PRICE + 1, "100", 1.5):
        response = client.post(url, headers=operator, json={"amount": amount, "keep_access": False, "reason": "x"})
        assert response.status_code == 400 and response.get_json()["error"]["field"] == "amount"
    half = client.post(url, headers=operator, json={"amount": COURSE_PRICE // 2, "keep_access": False,
                                                    "reason": "half the term"})
    assert half.status_code == 201 and half.get_json()["enrollment"]["status"] == "active"
    assert state(db)["enrollments"][0]["lots"] == [("private", 2, 1)]  # half of each lot, rounded down
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE // 2


def test_a_refund_whose_outcome_is_unknown_is_retried_with_the_same_key(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    body = {"keep_access": False, "reason": "left the school"}
    headers = {**operator, "Idempotency-Key": "support-ticket-42"}
    stripe_server.fail_next("POST", "/v1/refunds", status=500, times=2)  # the client retries once itself
    unknown = client.post(url, headers=headers, json=body)
    assert unknown.status_code == 502 and unknown.get_json()["refund"]["status"] == "pending"
    assert state(db)["enrollments"][0]["status"] == "active"
    retried = client.post(url, headers=headers, json=body)
    assert retried.status_code == 201 and retried.get_json()["refund"]["status"] == "succeeded"
    keys = {c.idempotency_key for c in stripe_server.calls("POST", "/v1/refunds")}
    assert len(keys) == 1 and _count(db, AdminRefund) == 1
    assert client.post(url, headers=headers, json=body).get_json()["refund"]["status"] == "succeeded"  # a repeat
    assert len([c for c in stripe_server.calls("POST", "/v1/refunds") if c.status == 200]) == 1
    assert state(db)["enrollments"][0]["status"] == "revoked"


def test_a_key_sent_again_with_another_refund_is_refused_and_makes_nothing(client, runtime, stripe_server, operator):
    """Before, the second request answered 201 with the first refund: a studio refunding a second time under the
    same ticket number believed it had refunded 5,000 more."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    headers = {**operator, "Idempotency-Key": "support-ticket-43"}
    first = client.post(url, headers=headers, json={"amount": 100, "keep_access": False, "reason": "late"})
    assert first.status_code == 201, first.get_json()
    before = state(db)
    for body in ({"amount": 5000, "keep_access": False, "reason": "again"},
                 {"amount": 100, "keep_access": True, "reason": "again"},
                 {"keep_access": True, "reason": "again"}):
        refused = client.post(url, headers=headers, json=body)
        assert refused.status_code == 409, (body, refused.get_json())
        error = refused.get_json()["error"]
        assert error["code"] == "idempotency_key_reused" and "a new refund needs a new key" in error["message"]
    assert state(db) == before and _count(db, AdminRefund) == 1
    assert len(stripe_server.calls("POST", "/v1/refunds")) == 1
    # the same request again is the retry it is meant for
    assert client.post(url, headers=headers, json={"amount": 100, "keep_access": False,
                                                   "reason": "late"}).status_code == 201
    assert [a[1] for a in _audit(db)] == ["enrollment.refund"]


def test_a_5xx_stripe_saved_under_the_key_does_not_hold_the_refund_for_a_day(client, runtime, stripe_server,
                                                                            operator):
    """Stripe saves an error that came once the call had begun and replays it to every retry with that key for
    24 hours: seeing the replay, coursepipe checks that no refund was made and makes it with a fresh key."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    stripe_server.fail_next("POST", "/v1/refunds", status=500, saved=True)
    done = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator,
                       json={"keep_access": False, "reason": "moved"})
    assert done.status_code == 201 and done.get_json()["refund"]["status"] == "succeeded"
    keys = [c.idempotency_key for c in stripe_server.calls("POST", "/v1/refunds")]
    assert len(keys) == 3 and keys[0] == keys[1] != keys[2]  # the client's own retry replayed the 500
    with db.session_scope() as s:
        assert s.scalar(select(AdminRefund.idempotency_key)) == keys[2]
    assert len(stripe_server.refunds) == 1 and stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE
    assert state(db)["enrollments"][0]["status"] == "revoked"


def test_a_refund_stripe_made_but_answered_500_is_found_and_not_made_twice(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    stripe_server.fail_next("POST", "/v1/refunds", status=500, ran=True)  # made, and its answer lost
    done = client.post(url, headers=operator, json={"amount": COURSE_PRICE // 2, "keep_access": False, "reason": "x"})
    assert done.status_code == 201, done.get_json()
    refund_id = done.get_json()["refund"]["stripe_refund_id"]
    assert list(stripe_server.refunds) == [refund_id]
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE // 2


def test_a_retry_after_an_unknown_outcome_finds_the_refund_the_first_call_made(client, runtime, stripe_server,
                                                                               operator):
    """The first call made the refund but its answer never came (and Stripe's 24 hours may have pruned the key):
    the retry asks Stripe before calling again, so a partial refund is never made twice."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    headers = {**operator, "Idempotency-Key": "ticket-11"}
    body = {"amount": COURSE_PRICE // 4, "keep_access": False, "reason": "x"}
    stripe_server.fail_next("POST", "/v1/refunds", status=500, ran=True, times=1)
    stripe_server.fail_next("GET", "/v1/refunds", status=503, times=2)  # and Stripe could not be asked then
    unknown = client.post(url, headers=headers, json=body)
    assert unknown.status_code == 502 and unknown.get_json()["refund"]["status"] == "pending"
    stripe_server._idempotent.clear()  # 24 hours later: Stripe has pruned the key
    retried = client.post(url, headers=headers, json=body)
    assert retried.status_code == 201 and retried.get_json()["refund"]["status"] == "succeeded"
    assert len(stripe_server.refunds) == 1
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE // 4


def test_the_same_key_sent_twice_at_once_makes_one_refund(app, runtime, stripe_server, operator):
    """Two requests with one Idempotency-Key at the same moment: both answer the one refund, none is a 500
    (both looked for the key before either recorded it)."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    headers = {**operator, "Idempotency-Key": "ticket-7"}

    def refund(client):
        return client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=headers,
                           json={"keep_access": False, "reason": "moved"})

    answers = at_once(app, db, [refund, refund], hold=(
        "SELECT id FROM student_course_enrollment WHERE id = :id FOR UPDATE", {"id": enrollment_id}))
    assert sorted(a.status_code for a in answers) == [201, 201], [a.get_json() for a in answers]
    refunds = {a.get_json()["refund"]["stripe_refund_id"] for a in answers}
    assert len(refunds) == 1 and None not in refunds and _count(db, AdminRefund) == 1
    assert [a[1] for a in _audit(db) if a[1] == "enrollment.refund"] == ["enrollment.refund"]
    assert state(db)["enrollments"][0]["status"] == "revoked"


@pytest.mark.parametrize("known", [True, False], ids=["known student", "student not mirrored yet"])
def test_one_comp_sent_twice_at_once_makes_one_enrollment(app, runtime, operator, known):
    """Two identical enrol-by-hand requests at the same moment: one enrollment, the other 409
    `already_enrolled` (both checked before either wrote: the test holds the student's row, or the insert of
    a student not mirrored yet)."""
    db = runtime.db
    _course(db)
    if known:
        with db.session_scope() as s:
            factories.student(s, id="stu_twice")
    hold = (("SELECT id FROM student WHERE id = :id FOR UPDATE", {"id": "stu_twice"}) if known else
            ("INSERT INTO student (id, created_at, updated_at) VALUES (:id, now(), now())", {"id": "stu_twice"}))

    def enrol(client):
        return client.post("/admin/enrollments", headers=operator, json={
            "student_id": "stu_twice", "course_code": "SFZ", "reason": "scholarship", "grant_bundle": True})

    answers = at_once(app, db, [enrol, enrol], hold=hold)
    assert sorted(a.status_code for a in answers) == [201, 409], [a.get_json() for a in answers]
    assert [a for a in answers if a.status_code == 409][0].get_json()["error"]["code"] == "already_enrolled"
    assert _count(db, StudentCourseEnrollment) == 1


def test_a_409_for_the_key_in_flight_leaves_the_refund_pending_not_failed(client, runtime, stripe_server, operator):
    """Stripe answers 409 to a request whose idempotency key another request is still using (and saves no
    answer for it): the outcome is unknown, so the refund stays pending and a retry with the key applies it."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    headers, body = {**operator, "Idempotency-Key": "ticket-9"}, {"keep_access": False, "reason": "moved"}
    stripe_server.fail_next("POST", "/v1/refunds", status=409, times=2, body={"error": {  # the client retries once
        "type": "idempotency_error", "message": "There is currently another in-progress request using this "
                                                "Stripe-Idempotency-Key"}})
    busy = client.post(url, headers=headers, json=body)
    assert busy.status_code == 502 and busy.get_json()["refund"]["status"] == "pending"
    assert state(db)["enrollments"][0]["status"] == "active"
    retried = client.post(url, headers=headers, json=body)
    assert retried.status_code == 201 and retried.get_json()["refund"]["status"] == "succeeded"
    assert _count(db, AdminRefund) == 1 and state(db)["enrollments"][0]["status"] == "revoked"


def test_a_refund_stripe_refuses_is_recorded_failed_and_changes_nothing(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    before = state(db)
    stripe_server.fail_next("POST", "/v1/refunds", status=400, body={"error": {
        "type": "invalid_request_error", "code": "charge_disputed", "message": "Charge ch_1 has been charged back"}})
    refused = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator,
                          json={"keep_access": False, "reason": "x"})
    assert refused.status_code == 402 and "charged back" in refused.get_json()["error"]["message"]
    assert refused.get_json()["refund"]["status"] == "failed" and state(db) == before


def test_a_manual_enrollment_has_nothing_to_refund(client, runtime, operator):
    db = runtime.db
    _course(db)
    made = client.post("/admin/enrollments", headers=operator, json={
        "student_id": "stu_9", "course_code": "SFZ", "reason": "comp", "grant_bundle": False}).get_json()
    from ingress.app import create_app

    runtime.settings = runtime.settings.with_(stripe_api_key=None)
    keyless = create_app(runtime.settings, runtime=runtime).test_client()
    for preview in (True, False):  # before: without STRIPE_API_KEY the refund itself answered 503, not why
        refused = keyless.post(f"/admin/enrollments/{made['enrollment']['id']}/refund", headers=operator,
                              json={"keep_access": False, "reason": "x", "preview": preview})
        assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "not_refundable"


# --------------------------------------------------------------------------- refunds left pending: the `refunds` job


def _settle(runtime, *, minutes: int = 11) -> dict:
    return refund_calls.settle_pending(unit_of_work=runtime.db.session_scope, settings=runtime.settings,
                                       now=utcnow() + timedelta(minutes=minutes))


def _pending(client, operator, enrollment_id, stripe_server, *, ran: bool, amount: int | None = None) -> dict:
    """A refund asked without an Idempotency-Key whose outcome stayed unknown: its caller cannot retry it."""
    if ran:  # Stripe made it and the answer was lost; asking Stripe failed too
        stripe_server.fail_next("POST", "/v1/refunds", status=500, ran=True)
        stripe_server.fail_next("GET", "/v1/refunds", status=503, times=2)
    else:  # Stripe never got the call (the client retries once itself)
        stripe_server.fail_next("POST", "/v1/refunds", status=500, times=2)
    body = {"keep_access": False, "reason": "left the school", **({"amount": amount} if amount else {})}
    unknown = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator, json=body)
    assert unknown.status_code == 502 and unknown.get_json()["refund"]["status"] == "pending"
    return unknown.get_json()["refund"]


def test_a_refund_left_pending_is_made_by_the_refunds_job_once_it_is_stale(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    pending = _pending(client, operator, enrollment_id, stripe_server, ran=False)
    assert stripe_server.refunds == {}
    calls = len(stripe_server.calls())
    assert _settle(runtime, minutes=5) == {"succeeded": 0, "failed": 0, "pending": 0, "errors": 0}  # a request may still run
    assert len(stripe_server.calls()) == calls
    assert _settle(runtime) == {"succeeded": 1, "failed": 0, "pending": 0, "errors": 0}
    assert len(stripe_server.refunds) == 1 and stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE
    keys = {c.idempotency_key for c in stripe_server.calls("POST", "/v1/refunds")}
    assert len(keys) == 1  # the intent's own key
    with db.session_scope() as s:
        row = s.get(AdminRefund, pending["id"])
        assert row.status == "succeeded" and row.stripe_refund_id in stripe_server.refunds
    assert state(db)["enrollments"][0]["status"] == "revoked"
    assert _settle(runtime) == {"succeeded": 0, "failed": 0, "pending": 0, "errors": 0}  # nothing left: no call
    assert len(stripe_server.refunds) == 1


def test_the_refunds_job_finds_a_refund_stripe_made_after_its_key_was_pruned(client, runtime, stripe_server,
                                                                              operator):
    """The call made the refund but its answer was lost, and nobody retried within Stripe's 24 hours: the job
    asks Stripe first, so a partial refund is never made twice."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    pending = _pending(client, operator, enrollment_id, stripe_server, ran=True, amount=COURSE_PRICE // 4)
    stripe_server._idempotent.clear()  # 24 hours later
    assert _settle(runtime, minutes=24 * 60) == {"succeeded": 1, "failed": 0, "pending": 0, "errors": 0}
    assert len(stripe_server.refunds) == 1
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE // 4
    with db.session_scope() as s:
        assert s.get(AdminRefund, pending["id"]).stripe_refund_id == next(iter(stripe_server.refunds))


def test_a_retry_of_a_refund_whose_request_died_asks_stripe_first(client, runtime, stripe_server, operator):
    """The request died after Stripe made the refund, before anything was recorded (no `last_error`): a retry
    with its Idempotency-Key after Stripe's 24 hours finds the refund instead of making a second one."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    with db.session_scope() as s:
        plan = manual.check_refund(session=s, enrollment_id=enrollment_id, amount=COURSE_PRICE // 2)
        row = manual.refund_intent(session=s, plan=plan, keep_access=False, reason="x", actor="op",
                                   request_key="ticket-5")
        call = refund_calls._Call.of(s, row, retried=False)
    stripe_server.client().v1.refunds.create(call.params, {"idempotency_key": call.key})  # then the process died
    stripe_server._idempotent.clear()
    retried = client.post(f"/admin/enrollments/{enrollment_id}/refund",
                          headers={**operator, "Idempotency-Key": "ticket-5"},
                          json={"amount": COURSE_PRICE // 2, "keep_access": False, "reason": "x"})
    assert retried.status_code == 201 and retried.get_json()["refund"]["status"] == "succeeded"
    assert len(stripe_server.refunds) == 1
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE // 2


def test_a_refund_still_pending_is_not_left_to_refund_again(client, runtime, stripe_server, operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    url = f"/admin/enrollments/{enrollment_id}/refund"
    _pending(client, operator, enrollment_id, stripe_server, ran=False, amount=COURSE_PRICE // 2)
    too_much = client.post(url, headers=operator, json={"amount": COURSE_PRICE // 2 + 1, "keep_access": False,
                                                        "reason": "x", "preview": True})
    assert too_much.status_code == 400 and too_much.get_json()["error"]["field"] == "amount"
    assert str(COURSE_PRICE // 2) in too_much.get_json()["error"]["message"]
    rest = client.post(url, headers=operator, json={"keep_access": False, "reason": "the rest"})
    assert rest.status_code == 201 and rest.get_json()["refund"]["amount"] == COURSE_PRICE // 2
    assert _settle(runtime)["succeeded"] == 1
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE and len(stripe_server.refunds) == 2
    nothing = client.post(url, headers=operator, json={"keep_access": False, "reason": "x", "preview": True})
    assert nothing.status_code == 409 and nothing.get_json()["error"]["code"] == "not_refundable"
    assert state(db)["enrollments"][0]["status"] == "revoked"


def test_the_refunds_job_records_a_refusal_and_keeps_an_unknown_outcome_pending(client, runtime, stripe_server,
                                                                                 operator):
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    pending = _pending(client, operator, enrollment_id, stripe_server, ran=False)
    stripe_server.fail_next("POST", "/v1/refunds", status=503, times=2)
    assert _settle(runtime) == {"succeeded": 0, "failed": 0, "pending": 1, "errors": 0}
    stripe_server.fail_next("POST", "/v1/refunds", status=400, body={"error": {
        "type": "invalid_request_error", "code": "charge_disputed", "message": "Charge ch_1 has been charged back"}})
    assert _settle(runtime) == {"succeeded": 0, "failed": 1, "pending": 0, "errors": 0}
    with db.session_scope() as s:
        row = s.get(AdminRefund, pending["id"])
        assert row.status == "failed" and "charged back" in row.last_error
    assert stripe_server.refunds == {} and state(db)["enrollments"][0]["status"] == "active"


def test_the_refunds_job_without_a_stripe_key_reports_what_waits(runtime, stripe_server):
    enrollment_id = _purchase(runtime.db, stripe_server)
    with runtime.db.session_scope() as s:
        manual.refund_intent(session=s, plan=manual.check_refund(session=s, enrollment_id=enrollment_id, amount=None),
                             keep_access=False, reason="x", actor="op", request_key=None)
    unconfigured = make_settings(runtime.settings.database_url)
    assert refund_calls.settle_pending(unit_of_work=runtime.db.session_scope, settings=unconfigured,
                                       now=utcnow() + timedelta(minutes=11)) == {"succeeded": 0, "failed": 0,
                                                                                "pending": 1, "errors": 0}
    assert stripe_server.calls("POST", "/v1/refunds") == []


def test_a_refund_pending_exactly_stale_after_is_taken_by_the_refunds_job(runtime, stripe_server):
    """"Left pending 10 minutes or more": before, one asked exactly STALE_AFTER ago waited for the next run."""
    enrollment_id = _purchase(runtime.db, stripe_server)
    with runtime.db.session_scope() as s:
        manual.refund_intent(session=s, plan=manual.check_refund(session=s, enrollment_id=enrollment_id, amount=None),
                             keep_access=False, reason="x", actor="op", request_key=None)
        asked = s.scalar(select(AdminRefund.created_at))
    unconfigured = make_settings(runtime.settings.database_url)
    settle = lambda at: refund_calls.settle_pending(  # noqa: E731
        unit_of_work=runtime.db.session_scope, settings=unconfigured, now=at)["pending"]
    assert settle(asked + refund_calls.STALE_AFTER - timedelta(microseconds=1)) == 0
    assert settle(asked + refund_calls.STALE_AFTER) == 1


def test_a_refund_stripe_made_and_then_failed_is_recorded_failed_and_the_run_goes_on(runtime, stripe_server):
    """The job finds the refund Stripe made for an admin refund, failed: no money went back, so the admin
    refund is `failed` (not `succeeded`), and the next pending refund of the run is still made."""
    enrollment_id = _purchase(runtime.db, stripe_server)
    with runtime.db.session_scope() as s:
        first = manual.refund_intent(session=s, plan=manual.check_refund(
            session=s, enrollment_id=enrollment_id, amount=COURSE_PRICE // 2), keep_access=False, reason="x",
            actor="op", request_key=None).id
        second = manual.refund_intent(session=s, plan=manual.check_refund(
            session=s, enrollment_id=enrollment_id, amount=None), keep_access=False, reason="y",
            actor="op", request_key=None).id
    stripe_server.add_refund(payment_intent="pi_1", amount=COURSE_PRICE // 2, status="failed",
                             metadata={"admin_refund_id": str(first)})
    assert _settle(runtime) == {"succeeded": 1, "failed": 1, "pending": 0, "errors": 0}
    with runtime.db.session_scope() as s:
        assert s.get(AdminRefund, first).status == "failed" and "failed" in s.get(AdminRefund, first).last_error
        assert s.get(AdminRefund, second).status == "succeeded"
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE - COURSE_PRICE // 2


def test_a_pending_refund_stripe_already_counts_is_not_taken_off_twice(client, runtime, stripe_server, operator):
    """The refund was made (its answer lost: pending here) and `charge.refunded`, which at the pinned API version
    carries no list of refunds, raised the purchase's refunded total by it: the rest is still left to refund."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    _pending(client, operator, enrollment_id, stripe_server, ran=True, amount=COURSE_PRICE // 2)
    event = charge_refunded(amount=COURSE_PRICE, refunded=COURSE_PRICE // 2, refunds=())
    del event["data"]["object"]["refunds"]
    deliver(db, event)
    assert state(db)["enrollments"][0]["refunded"] == COURSE_PRICE // 2
    preview = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator,
                          json={"keep_access": False, "reason": "the rest", "preview": True})
    assert preview.status_code == 200, preview.get_json()
    assert preview.get_json()["refundable"] == COURSE_PRICE - COURSE_PRICE // 2


def test_a_refund_that_failed_is_left_to_refund_again(client, runtime, stripe_server, operator):
    """Half refunded in Stripe's dashboard, counted (`charge.refunded` raised the purchase's total), then the refund
    failed: the money is back with the studio, but "left to refund" was measured from the highest total reached,
    so the studio could not refund that half again through coursepipe."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    half = COURSE_PRICE // 2
    deliver(db, refund_created(refund_id="re_x", amount=half, event_id="evt_re_made"))
    deliver(db, charge_refunded(refunded=half, refunds=(("re_x", half),), event_id="evt_ch_refunded"))
    failed = refund_created(refund_id="re_x", amount=half, status="failed", event_id="evt_re_failed")
    failed["type"] = "charge.refund.updated"
    deliver(db, failed)
    assert state(db)["enrollments"][0]["refunded"] == half  # the highest total reached: what it took stays taken
    url = f"/admin/enrollments/{enrollment_id}/refund"
    preview = client.post(url, headers=operator, json={"keep_access": True, "reason": "again", "preview": True})
    assert preview.status_code == 200, preview.get_json()
    assert preview.get_json()["refundable"] == COURSE_PRICE
    again = client.post(url, headers=operator, json={"amount": COURSE_PRICE, "keep_access": True, "reason": "again"})
    assert again.status_code == 201, again.get_json()
    assert stripe_server.payment_intents["pi_1"]["amount_refunded"] == COURSE_PRICE
    nothing = client.post(url, headers=operator, json={"keep_access": True, "reason": "x", "preview": True})
    assert nothing.status_code == 409 and nothing.get_json()["error"]["code"] == "not_refundable"


def test_a_refund_only_stripe_s_total_knows_is_not_left_to_refund(client, runtime, stripe_server, operator):
    """`charge.refunded` without its list of refunds (a refund made elsewhere): its total is held, a failed refund
    known by id beside it is not. The total is taken to hold every refund that went through before (the failed
    one included): were it not, the figure would be too high and Stripe would refuse the excess."""
    db = runtime.db
    enrollment_id = _purchase(db, stripe_server)
    deliver(db, refund_created(refund_id="re_f", amount=1000, event_id="evt_f_made"))
    failed = refund_created(refund_id="re_f", amount=1000, status="failed", event_id="evt_f_failed")
    failed["type"] = "charge.refund.updated"
    deliver(db, failed)
    event = charge_refunded(refunded=3000, refunds=(), event_id="evt_total")
    del event["data"]["object"]["refunds"]
    deliver(db, event)
    preview = client.post(f"/admin/enrollments/{enrollment_id}/refund", headers=operator,
                          json={"keep_access": True, "reason": "x", "preview": True})
    assert preview.status_code == 200, preview.get_json()
    assert preview.get_json()["refundable"] == COURSE_PRICE - 3000 + 1000  # the failed 1000 counted once, then not
