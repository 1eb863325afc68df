"""Publishing a course or package to Stripe: intent → call → outcome, each in a unit of work of its own.

`tasks.catalog.publishing` decides each call (`next_intent`) and records what Stripe answered
(`record_outcome`); this module owns the transactions around them, so no Stripe call ever runs inside one.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Callable

from sqlalchemy.orm import Session

from db.enums import PublicationStatus
from tasks.catalog import drift, publishing
from tasks.stripe_api import key_mode, stripe_client

log = logging.getLogger("coursepipe.publishing")

UnitOfWork = Callable[[], AbstractContextManager[Session]]


def publish(kind: str, code: str, *, unit_of_work: UnitOfWork, settings: Any = None,
            client: Any = None) -> publishing.Published:
    """Bring Stripe in line with the listing, one recorded call at a time, then mark it published.

    `unit_of_work` is `Database.session_scope`: the first call is recorded in a unit of work of its own, each
    outcome with the call after it in the next one, and every Stripe call is made between them.
    Raises PublishFailed (Stripe refused), PublishRetry (try again later, same keys), StripeNotConfigured
    (no STRIPE_API_KEY: nothing changes).
    """
    import stripe

    client = client or stripe_client(settings, purpose="publishing to Stripe is disabled")
    mode = key_mode(getattr(settings, "stripe_api_key", None))
    calls: list[dict[str, Any]] = []
    woken: list[int] = []
    with unit_of_work() as session:
        intent = publishing.next_intent(session=session, kind=kind, code=code, mode=mode)
    while intent is not None:
        if len(calls) >= publishing.MAX_CALLS_PER_PUBLISH:
            raise publishing.PublishRetry(f"{kind} {code!r}: still not in line with Stripe after "
                                          f"{publishing.MAX_CALLS_PER_PUBLISH} calls")
        try:
            result, error = publishing.call_stripe(intent, client=client), None  # outside any transaction
        except stripe.StripeError as exc:
            result, error = None, exc
        # the outcome and the next call are recorded together: until Stripe is in line a call stays pending,
        # which the publishing job finds if this publish stops (`publishing.stalled`)
        done, intent, stop = intent, None, None
        with unit_of_work() as session:
            outcome = publishing.record_outcome(session=session, intent=done, result=result, error=error)
            if error is None:
                try:
                    with session.begin_nested():  # what Stripe answered is kept whatever the planning raises
                        intent = publishing.next_intent(session=session, kind=kind, code=code, mode=mode)
                except Exception as exc:  # noqa: BLE001 - raised once the outcome is committed
                    stop = exc
        if stop is not None:
            raise stop
        if outcome.status is PublicationStatus.SUCCEEDED and result is not None:  # None: settled by another
            _check_answer(unit_of_work, result)
        woken += outcome.woken
        calls.append({"object_type": done.object_type, "action": done.action, "target": done.target,
                      "idempotency_key": done.idempotency_key, "status": outcome.status.value,
                      "stripe_id": outcome.stripe_id})
        if error is not None:
            log.warning("publishing %s %s: %s %s failed: %s", kind, code, done.object_type, done.action, error)
            if outcome.status is PublicationStatus.PENDING:
                raise publishing.PublishRetry(f"{kind} {code!r}: Stripe {done.object_type} {done.action} "
                                              f"failed, will retry with the same key: {error}")
            raise publishing.PublishFailed(
                f"{kind} {code!r}: Stripe refused {done.object_type} {done.action}: {error}")
    with unit_of_work() as session:
        product_id, price_id = publishing.published_ids(session, kind, code)
    return publishing.Published(kind=kind, code=code, calls=calls, product_id=product_id, price_id=price_id,
                                woken=woken)


def _check_answer(unit_of_work: UnitOfWork, result: Any) -> None:
    """Resolve drift the call's answer settles, once its outcome is committed: a surprise here is logged, never
    allowed to undo the record of a call Stripe made (which would make it again)."""
    try:
        with unit_of_work() as session:
            drift.check_answer(session=session, obj=result.to_dict() if hasattr(result, "to_dict") else result)
    except Exception:
        log.exception("publishing: the drift check of a Stripe answer failed; the next event or publish checks again")


def request_publish(*, unit_of_work: UnitOfWork, settings: Any, kind: str, code: str,
                    send: Callable[..., bool]) -> bool:
    """Queue the publish of KIND CODE after checking it can run (`check_publishable`): what cannot run is
    refused here, to the admin, not in a worker's log. Its first call is recorded before the message is sent,
    so a publish asked for is never lost with its message: the publishing job finds the call pending and sends
    the publish again (`resume_stalled`). Returns False when the queue is unavailable."""
    with unit_of_work() as session:
        publishing.check_publishable(session=session, settings=settings, kind=kind, code=code)
        publishing.next_intent(session=session, kind=kind, code=code, mode=key_mode(settings.stripe_api_key))
    return send("publish_listing", kind, code)


def resume_stalled(*, unit_of_work: UnitOfWork, settings: Any, send: Callable[..., bool],
                   now: datetime | None = None) -> int:
    """Send the publish again of each listing with a Stripe call left pending (`publishing.stalled`): its publish
    stopped before Stripe was in line (a worker lost with its message, the retries spent). Returns how many."""
    if not settings.stripe_api_key:
        return 0
    with unit_of_work() as session:
        listings = publishing.stalled(session=session, mode=key_mode(settings.stripe_api_key), now=now)
    for kind, code in listings:
        log.warning("publishing %s %s stopped with a Stripe call pending: sent again", kind, code)
        send("publish_listing", kind, code)
    return len(listings)
