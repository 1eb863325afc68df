"""Submitting a dispute's evidence to Stripe: intent (one transaction) → Stripe calls (none) → outcome
(one transaction). The caller is the admin API or the dashboard; nothing here runs inside a transaction
while Stripe is called."""
from __future__ import annotations

from typing import Any

from tasks.purchases import evidence
from tasks.stripe_api import stripe_client


def submit(db, settings, stripe_dispute_id: str, *, client: Any = None) -> dict[str, Any]:
    """Submit the evidence of one open dispute; returns the evidence view after the outcome was recorded."""
    client = client or stripe_client(settings, purpose="submitting dispute evidence needs it")
    with db.session_scope() as session:
        submission = evidence.begin_submission(session=session, stripe_dispute_id=stripe_dispute_id)
    sent = evidence.send(client, submission)  # outside any transaction
    with db.session_scope() as session:
        evidence.record_submission(session=session, submission=submission, sent=sent)
        return evidence.view(session=session, stripe_dispute_id=stripe_dispute_id)
