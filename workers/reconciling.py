"""The reconcile job's unit of work: list Stripe events (network, no transaction), then store the ones
the inbox lacks (one transaction), then send them to the workers (after commit)."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from tasks.purchases import reconcile as reconciliation
from workers import job_runs, metrics

log = logging.getLogger("coursepipe.reconcile")

JOB = "reconcile"


def handled_stripe_types(handlers) -> list[str]:
    """The Stripe event types the handler table applies: what reconcile asks Stripe for."""
    return sorted(type_ for source, type_ in handlers if source == "stripe")


def run(rt, *, lookback_hours: int | None = None, max_calls: int | None = None, enqueue=None) -> dict[str, Any]:
    """One reconcile run; returns what it did (recorded on its job_run, shown on the dashboard)."""
    if not rt.settings.stripe_api_key:
        log.warning("reconcile skipped: STRIPE_API_KEY is not set")
        return {"skipped": "STRIPE_API_KEY is not set"}
    _, last = job_runs.last_result(rt.db, JOB)
    listing = reconciliation.list_events(
        settings=rt.settings, types=handled_stripe_types(rt.handlers),
        lookback=timedelta(hours=lookback_hours) if lookback_hours else reconciliation.LOOKBACK,
        max_calls=max_calls or reconciliation.MAX_CALLS, resume_after=last.get("cursor"))
    with rt.db.session_scope() as session:
        report = reconciliation.record_missing(session=session, events=listing.events)
    if enqueue is not None:
        enqueue(report.inbox_ids)
    by_type = report.by_type()
    metrics.reconcile_recovered(by_type)
    if report.recovered:
        log.warning("reconcile: recovered %d Stripe event(s) no webhook had delivered: %s", len(report.recovered),
                    ", ".join(f"{event_id} ({type_})" for event_id, type_ in report.recovered))
    else:
        log.info("reconcile: %d Stripe event(s) checked in %d call(s), none missing", report.checked, listing.calls)
    return {"checked": report.checked, "recovered": len(report.recovered), "recovered_types": by_type,
            "undelivered": listing.undelivered, "calls": listing.calls, "cursor": listing.cursor,
            "invalid": len(report.invalid)}
