"""Dispute evidence: drafted when a dispute opens (from the enrollment, its bookings and attendance, the mails
sent), shown to admins with the deadline, and submitted to Stripe (the local server, the real client):
intent committed → files uploaded and the dispute updated → outcome."""
from __future__ import annotations

import logging
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import select, update

from db.enums import OutboxStatus
from db.models import AuditEntry, OutboxMessage, PaymentDispute
from db.types import utcnow
from tests import factories
from tests.conftest import make_settings
from tests.ingress.test_dashboard import login
from tests.tasks.bookings import bookings_support as bookings
from tests.tasks.purchases.payments_support import checkout, deliver, dispute_closed, dispute_created

DUE_BY = int(time.time()) + 7 * 86400


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def _story(database, settings) -> dict:
    """A course bought, a step booked and attended, the welcome mail sent; then the payment disputed."""
    with database.session_scope() as s:
        program = factories.program(s, steps=2)
        steps = [step.id for step in program.steps]
        for position in (1, 2):
            factories.group_class(s, id=f"gc_SFZ_{position}_0", title=f"Class {position}",
                                  starts_in=timedelta(days=-10 + position))
    deliver(database, checkout(cs="cs_d", pi="pi_d", email="ada@example.test"), settings)
    bookings.deliver(database, bookings.booking_created("bk_1", "gc_SFZ_1_0", step_id=steps[0]))
    bookings.deliver(database, bookings.attendance("bk_1"))
    with database.session_scope() as s:
        s.execute(update(OutboxMessage).where(OutboxMessage.topic == "enrollment_welcome")
                  .values(status=OutboxStatus.SENT, sent_at=utcnow()))
        welcome = s.scalar(select(OutboxMessage.public_id).where(OutboxMessage.topic == "enrollment_welcome"))
    event = dispute_created(dispute="dp_1", pi="pi_d")
    event["data"]["object"].update(evidence_details={"due_by": DUE_BY, "has_evidence": False, "past_due": False,
                                                     "submission_count": 0}, status="needs_response",
                                   reason="product_not_received", currency="usd")
    deliver(database, event, settings)
    return {"welcome": welcome}


def test_an_opened_dispute_gets_its_evidence_drafted_and_admins_get_the_deadline(database, settings):
    story = _story(database, settings)
    with database.session_scope() as s:
        row = s.scalar(select(PaymentDispute))
        assert row.evidence_status == "draft" and int(row.evidence_due_by.timestamp()) == DUE_BY
        assert row.stripe_status == "needs_response" and row.currency == "usd"
        evidence = row.evidence
        alert = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "dispute_alert"))
    assert alert.payload["context"]["evidence_due_by"] == row.evidence_due_by.isoformat()
    assert alert.payload["context"]["evidence_path"] == "/admin/disputes/dp_1/evidence"
    log = evidence["access_activity_log"]
    assert "purchase: checkout session cs_d" in log and "booked class gc_SFZ_1_0 \"Class 1\"" in log
    assert "attended: class gc_SFZ_1_0" in log and "for step SFZ-1 (booking bk_1)" in log
    assert f"Message-ID <{story['welcome']}@coursepipe>" in evidence["customer_communication"]
    assert "ada@example.test" in evidence["customer_communication"]
    assert "Total charged: 120.00 USD" in evidence["receipt"] and "cs_d" in evidence["receipt"]
    assert "1 were attended" in evidence["uncategorized_text"] and "stu_1" in evidence["uncategorized_text"]
    with database.session_scope() as s:  # the first attended class is the service date
        assert evidence["service_date"] == (utcnow() - timedelta(days=9)).strftime("%Y-%m-%d")


def test_the_admin_api_shows_the_evidence_and_submits_it_to_stripe_outside_any_transaction(
        database, runtime, client, admin_headers, stripe_server):
    _story(database, runtime.settings)
    stripe_server.add_dispute(id="dp_1", charge="ch_1", payment_intent="pi_d", status="needs_response")
    shown = client.get("/admin/disputes/dp_1/evidence", headers=admin_headers)
    assert shown.status_code == 200
    body = shown.get_json()
    assert body["evidence_status"] == "draft" and body["evidence_due_by"] and body["reason"] == "product_not_received"
    assert set(body["evidence"]) == {"service_date", "access_activity_log", "customer_communication", "receipt",
                                     "uncategorized_text", "customer_name", "customer_email_address",
                                     "product_description"}
    assert client.get("/admin/disputes/dp_1/evidence").status_code == 401
    assert client.get("/admin/disputes/dp_nope/evidence", headers=admin_headers).status_code == 404

    seen_during_call = []
    original = stripe_server._update_dispute

    @stripe_server.route("POST", r"/v1/disputes/(?P<id>[^/]+)")
    def update_dispute(request, id):
        # the intent is committed before Stripe is called, and no transaction holds the row meanwhile
        with database.engine.connect() as conn:
            locked = "" if database.dialect != "postgresql" else " FOR UPDATE NOWAIT"
            seen_during_call.append(conn.execute(sa.text(
                f"SELECT evidence_status FROM payment_dispute WHERE stripe_dispute_id = 'dp_1'{locked}")).scalar())
            conn.rollback()
        return original(request, id)

    submitted = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert submitted.status_code == 200, submitted.get_json()
    result = submitted.get_json()
    assert result["evidence_status"] == "submitted" and result["stripe_status"] == "under_review"
    assert seen_during_call == ["submitting"]
    uploads = stripe_server.calls("POST", "/v1/files")
    assert len(uploads) == 2 and all(u.params["purpose"] == "dispute_evidence" for u in uploads)
    assert all(u.uploads["file"][1].startswith(b"%PDF-") for u in uploads)
    assert all(u.status == 200 and u.idempotency_key.startswith("dispute-evidence:dp_1:") for u in uploads)
    (call,) = stripe_server.calls("POST", "/v1/disputes/dp_1")
    sent = call.params["evidence"]
    assert call.params["submit"] == "true" and call.status == 200
    assert sent["customer_communication"] == result["files"]["customer_communication"]
    assert sent["receipt"] == result["files"]["receipt"] and sent["receipt"].startswith("file_")
    assert sent["service_date"] == result["evidence"]["service_date"] and "bk_1" in sent["access_activity_log"]
    on_stripe = stripe_server.disputes["dp_1"]
    assert on_stripe["status"] == "under_review" and on_stripe["evidence_details"]["submission_count"] == 1
    # what was sent is what the page shows from now on
    assert client.get("/admin/disputes/dp_1/evidence", headers=admin_headers).get_json()["evidence"] == \
        result["evidence"]


def test_stripe_unreachable_is_not_reported_as_a_refusal_and_submitting_again_sends_once(
        database, runtime, client, admin_headers, stripe_server):
    """A 5xx from Stripe (its outcome unknown) answered `stripe_refused`, as if Stripe had judged the evidence."""
    _story(database, runtime.settings)
    stripe_server.add_dispute(id="dp_1", charge="ch_1", payment_intent="pi_d", status="needs_response")
    from tasks.stripe_api import STRIPE_NETWORK_RETRIES

    # every try of the submitting call fails: the client's own retries too
    stripe_server.fail_next("POST", r"/v1/disputes/dp_1", status=503, times=1 + STRIPE_NETWORK_RETRIES)
    unknown = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert unknown.status_code == 502 and unknown.get_json()["error"]["code"] == "stripe_unavailable"
    assert unknown.get_json()["evidence"]["evidence_status"] == "failed"
    again = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert again.status_code == 200 and again.get_json()["evidence_status"] == "submitted"
    assert stripe_server.disputes["dp_1"]["evidence_details"]["submission_count"] == 1


def test_a_refusal_by_stripe_is_recorded_and_can_be_submitted_again(database, runtime, client, admin_headers,
                                                                    stripe_server, caplog):
    caplog.set_level(logging.INFO, logger="coursepipe.audit")
    _story(database, runtime.settings)
    stripe_server.add_dispute(id="dp_1", charge="ch_1", payment_intent="pi_d", status="needs_response")
    stripe_server.fail_next("POST", r"/v1/disputes/dp_1", status=400, body={"error": {
        "type": "invalid_request_error", "message": "This dispute is already closed."}})
    refused = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert refused.status_code == 502 and refused.get_json()["error"]["code"] == "stripe_refused"
    with database.session_scope() as s:
        row = s.scalar(select(PaymentDispute))
        assert row.evidence_status == "failed" and "already closed" in row.evidence_error
    again = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert again.status_code == 200 and again.get_json()["evidence_status"] == "submitted"
    # the refused submission is audited too, so it has its log line although it answered 502
    assert [r.event["action"] for r in caplog.records if r.msg == "admin action"] == \
        ["dispute.evidence_submit", "dispute.evidence_submit"]
    # each submission its own keys: the second is not a replay of the first
    keys = {c.idempotency_key.rsplit(":", 1)[0] for c in stripe_server.calls("POST", "/v1/disputes/dp_1")}
    assert len(keys) == 2
    with database.session_scope() as s:  # both submissions audited with their outcome
        assert [(e.actor, e.action, e.target, e.details["outcome"]) for e in
                s.scalars(select(AuditEntry).order_by(AuditEntry.id))] == [
            ("ADMIN_TOKEN", "dispute.evidence_submit", "dispute:dp_1", "failed"),
            ("ADMIN_TOKEN", "dispute.evidence_submit", "dispute:dp_1", "submitted")]


def test_a_closed_dispute_is_not_submitted(database, runtime, client, admin_headers, stripe_server):
    _story(database, runtime.settings)
    deliver(database, dispute_closed(dispute="dp_1", pi="pi_d", status="lost"), runtime.settings)
    answer = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert answer.status_code == 409 and answer.get_json()["error"]["code"] == "dispute_closed"
    assert stripe_server.calls("POST") == []
    with database.session_scope() as s:  # refused before anything was sent: nothing to audit
        assert s.scalar(select(AuditEntry)) is None


def test_the_dashboard_lists_open_disputes_with_their_deadline_and_submits_from_the_page(
        database, runtime, client, stripe_server):
    _story(database, runtime.settings)
    stripe_server.add_dispute(id="dp_1", charge="ch_1", payment_intent="pi_d", status="needs_response")
    csrf = login(client)
    home = client.get("/admin/").get_data(as_text=True)
    assert 'data-dispute-id="dp_1"' in home and "product_not_received" in home
    page = client.get("/admin/ui/disputes/dp_1").get_data(as_text=True)
    assert "Submit evidence to Stripe" in page and 'data-field="access_activity_log"' in page and "bk_1" in page
    done = client.post("/admin/ui/disputes/dp_1/submit", data={"csrf_token": csrf}, follow_redirects=True)
    assert done.status_code == 200 and "submitted to Stripe" in done.get_data(as_text=True)
    assert stripe_server.disputes["dp_1"]["status"] == "under_review"


def test_a_submission_whose_answer_was_lost_is_recorded_from_stripe_and_not_sent_again(
        database, runtime, client, admin_headers, stripe_server):
    """Stripe submitted the evidence, then the process died before it recorded the answer: the row stays
    `submitting`. Once its lease has run out an admin submits again. Stripe takes evidence once, so a second
    update is refused; before, that refusal was recorded `failed` although the bank has the evidence."""
    from tasks.purchases import evidence
    from tasks.stripe_api import stripe_client

    _story(database, runtime.settings)
    stripe_server.add_dispute(id="dp_1", charge="ch_1", payment_intent="pi_d", status="needs_response")
    with database.session_scope() as s:
        submission = evidence.begin_submission(session=s, stripe_dispute_id="dp_1")
    assert evidence.send(stripe_client(runtime.settings), submission).ok  # … and nothing recorded after it
    with database.session_scope() as s:
        s.execute(update(PaymentDispute).values(evidence_requested_at=utcnow() - evidence.SUBMITTING_LEASE
                                                - timedelta(seconds=1)))
    on_stripe = stripe_server.disputes["dp_1"]["evidence"]

    again = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert again.status_code == 200, again.get_json()
    result = again.get_json()
    assert result["evidence_status"] == "submitted" and result["stripe_status"] == "under_review"
    assert result["error"] is None
    assert stripe_server.disputes["dp_1"]["evidence_details"]["submission_count"] == 1
    assert len(stripe_server.calls("POST", "/v1/disputes/dp_1")) == 1  # the lost attempt's only
    assert len(stripe_server.calls("POST", "/v1/files")) == 2  # nothing uploaded again
    # the page shows what the bank has: the text and the files Stripe holds
    shown = client.get("/admin/disputes/dp_1/evidence", headers=admin_headers).get_json()
    assert shown["evidence"]["access_activity_log"] == on_stripe["access_activity_log"]
    assert shown["files"] == {"customer_communication": on_stripe["customer_communication"],
                              "receipt": on_stripe["receipt"]}


def test_evidence_submitted_in_stripes_dashboard_is_recorded_as_submitted(database, runtime, client,
                                                                          admin_headers, stripe_server):
    _story(database, runtime.settings)
    stripe_server.add_dispute(id="dp_1", charge="ch_1", payment_intent="pi_d", status="under_review",
                              evidence={"uncategorized_text": "Sent by hand from the Stripe Dashboard.",
                                        "customer_name": "Ada Lovelace", "customer_email_address": "ada@x.test"},
                              evidence_details={"due_by": DUE_BY, "has_evidence": True, "past_due": False,
                                                "submission_count": 1})
    answer = client.post("/admin/disputes/dp_1/evidence/submit", headers=admin_headers)
    assert answer.status_code == 200 and answer.get_json()["evidence_status"] == "submitted"
    shown = answer.get_json()["evidence"]
    assert shown["uncategorized_text"] == "Sent by hand from the Stripe Dashboard."
    # the customer as Stripe holds them is not copied here (our own record of them may have been erased)
    assert shown["customer_name"] == shown["customer_email_address"] == "(as held at Stripe)"
    assert stripe_server.calls("POST") == []  # nothing uploaded, nothing sent
    # and a second ask is answered from the row: nothing is open to submit
    with database.session_scope() as s:
        assert s.scalar(select(PaymentDispute.evidence_status)) == "submitted"


def test_a_package_disputes_evidence_counts_only_the_bookings_that_spent_that_package(database):
    """Two packages: every booking spent the one expiring first. Before: a dispute of the other drafted evidence
    saying its credits were used for every credit booking the student made after buying it (3), and listed them
    in the access activity log, where its ledger shows none spent (0)."""
    from db.enums import CreditType
    from db.models import CreditPackage
    from tasks.ledger import credits
    from tasks.purchases import evidence

    with database.session_scope() as s:
        s.add(CreditPackage(code="SHORT", title="Short", price_amount=5000, credit_type=CreditType.GROUP,
                            quantity=5, validity_days=30, stripe_price_id="price_short"))
        s.add(CreditPackage(code="LONG", title="Long", price_amount=9000, credit_type=CreditType.GROUP,
                            quantity=10, validity_days=None, stripe_price_id="price_long"))
        factories.group_class(s, id="gc_x", title="X", starts_in=timedelta(days=2))
    deliver(database, checkout(cs="cs_a", pi="pi_a", package="SHORT", amount=5000))
    deliver(database, checkout(cs="cs_b", pi="pi_b", package="LONG", amount=9000))
    for n in range(3):
        bookings.deliver(database, bookings.booking_created(f"bk_{n}", "gc_x", credit_type="group",
                                                            when=utcnow() + timedelta(seconds=5 + n)))
    bookings.deliver(database, bookings.booking_cancelled("bk_2", when=utcnow() + timedelta(seconds=9)))
    with database.session_scope() as s:
        assert {lot.grant.quantity: lot.remaining for lot in credits.lots(session=s, student_id="stu_1")} == \
            {5: 3, 10: 10}
    for dispute, pi in (("dp_long", "pi_b"), ("dp_short", "pi_a")):
        deliver(database, dispute_created(dispute=dispute, pi=pi, amount=9000))
    drafted = {}
    with database.session_scope() as s:
        for dispute in ("dp_long", "dp_short"):
            row = s.scalar(select(PaymentDispute).where(PaymentDispute.stripe_dispute_id == dispute))
            drafted[dispute] = evidence.draft(session=s, dispute=row)
    assert "credits were used for 0 booking(s)" in drafted["dp_long"]["uncategorized_text"]
    assert "bk_" not in drafted["dp_long"]["access_activity_log"]
    # the short package: three bookings spent it, one gave its credit back
    assert "credits were used for 2 booking(s)" in drafted["dp_short"]["uncategorized_text"]
    assert all(f"booking bk_{n}" in drafted["dp_short"]["access_activity_log"] for n in range(3))
