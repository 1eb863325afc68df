"""Submitting a dispute's evidence to Stripe: intent (one transaction) → Stripe calls (none) → outcome
(one transaction). The caller is the admin API or the dashboard; nothing here runs inside a transaction
while Stripe is called."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tasks.purchases import evidence
from tasks.stripe_api import stripe_client


@dataclass(frozen=True)
class Outcome:
    """The evidence view after the outcome was recorded; `unknown`: not submitted, but not refused either
    (`tasks.stripe_api.outcome_unknown`: submitting again is safe, it reads the dispute first)."""

    view: dict[str, Any]
    unknown: bool = False


def submit(db, settings, stripe_dispute_id: str, *, client: Any = None) -> Outcome:
    """Submit the evidence of one open dispute (an unknown one is NotFound first, whatever the configuration)."""
    if client is None:
        with db.session_scope() as session:
            evidence.dispute_row(session, stripe_dispute_id)
        client = stripe_client(settings, purpose="submitting dispute evidence needs it")
    with db.session_scope() as session:
        submission = evidence.begin_submission(session=session, stripe_dispute_id=stripe_dispute_id)
    sent = evidence.send(client, submission)  # outside any transaction
    with db.session_scope() as session:
        evidence.record_submission(session=session, submission=submission, sent=sent)
        return Outcome(evidence.view(session=session, stripe_dispute_id=stripe_dispute_id), unknown=sent.unknown)
