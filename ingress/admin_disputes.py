"""Dispute evidence for admins: GET /admin/disputes/<id>/evidence, POST /admin/disputes/<id>/evidence/submit.

`<id>` is Stripe's dispute id (`dp_…`). The evidence is drafted from the enrollment, its bookings and
attendance and the mails sent; submitting sends it to Stripe (intent → call → outcome,
`workers.dispute_evidence`).
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ingress import roles
from ingress.bodies import json_object
from ingress.roles import require_role
from ingress.errors import ApiError
from tasks.errors import NotFound
from tasks.purchases import evidence
from tasks.stripe_api import StripeNotConfigured
from workers import dispute_evidence

bp = Blueprint("admin_disputes", __name__, url_prefix="/admin")


def submit_or_error(runtime, dispute_id: str, reason: str | None = None) -> dispute_evidence.Outcome:
    """Submit, with every refusal as the API error an admin reads (the dashboard shows the same). A
    submission that reached Stripe is audited with its outcome (a refusal before it changes nothing)."""
    try:
        outcome = dispute_evidence.submit(runtime.db, runtime.settings, dispute_id)
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except evidence.EvidenceError as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    except StripeNotConfigured as exc:
        raise ApiError(503, "stripe_not_configured", str(exc)) from None
    result = outcome.view
    with runtime.db.session_scope() as session:
        roles.record_action(session, "dispute.evidence_submit", f"dispute:{dispute_id}", reason,
                            outcome=result["evidence_status"], error=result["error"])
    return outcome


@bp.get("/disputes/<dispute_id>/evidence")
@require_role("viewer")
def get_evidence(dispute_id: str):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    with runtime.db.session_scope() as session:  # an unknown dispute: NotFound, the app's 404
        return jsonify(evidence.view(session=session, stripe_dispute_id=dispute_id))


@bp.post("/disputes/<dispute_id>/evidence/submit")
@require_role("operator")
def submit_evidence(dispute_id: str):
    runtime = current_app.config["COURSEPIPE_RUNTIME"]
    outcome = submit_or_error(runtime, dispute_id, roles.reason_of(json_object(optional=True)))
    result = outcome.view
    if result["evidence_status"] != evidence.SUBMITTED:
        # refused by Stripe, or Stripe not reached (its outcome unknown: submitting again is safe)
        code = "stripe_unavailable" if outcome.unknown else "stripe_refused"
        return jsonify({"error": {"code": code, "message": result["error"] or "not submitted"},
                        "evidence": result}), 502
    return jsonify(result)
