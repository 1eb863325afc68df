"""A refund the studio asks for: intent → Stripe call → outcome, each in a unit of work of its own.

`tasks.purchases.manual` checks and records the intent (with its audit entry) and the outcome; this
module owns the transactions around them, so the Stripe call never runs inside one. The Stripe
idempotency key is the intent's: a caller retrying with the same `Idempotency-Key` reuses the intent
(and so the key), and Stripe answers the same refund. A refund left pending (its request died, or nobody
retried) is finished by the `refunds` job (`settle_pending`) the same way.
"""
from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AdminRefund, StudentCourseEnrollment
from db.types import utcnow
from tasks.admins import audit
from tasks.admins.accounts import Principal
from tasks.errors import KeyReused
from tasks.purchases import manual
from tasks.purchases.shapes import REFUND_NOT_COUNTED
from tasks.stripe_api import saved_server_error, stripe_client

log = logging.getLogger("coursepipe.refunds")

UnitOfWork = Callable[[], AbstractContextManager[Session]]

STALE_AFTER = timedelta(minutes=10)  # far past any request's own call and retries (a request gets 30 s)
SETTLE_LIMIT = 50  # pending refunds one run of the `refunds` job takes, oldest first


def refund_enrollment(*, unit_of_work: UnitOfWork, settings: Any, principal: Principal, enrollment_id: int,
                      amount: int | None, keep_access: bool, reason: str, request_key: str | None = None,
                      client: Any = None) -> dict[str, Any]:
    """Returns the admin refund's view; its `status` is `succeeded`, `failed` (Stripe refused) or
    `pending` (the outcome is unknown: retry with the same Idempotency-Key, or the `refunds` job settles it)."""
    with unit_of_work() as session:
        row, created = None, False
        if request_key:
            # the enrollment's lock first: a request sent twice at once waits here for the other's intent,
            # then finds it by its key
            manual.locked(session, enrollment_id)
            row = session.scalar(select(AdminRefund).where(AdminRefund.request_key == request_key))
            if row is not None and row.enrollment_id != enrollment_id:
                raise manual.NotAllowed(f"Idempotency-Key {request_key!r} was used for enrollment {row.enrollment_id}")
            # a retry sends what the first request sent (`amount` absent then means the rest, as it did)
            if row is not None and (row.keep_access != keep_access or amount not in (None, row.amount)):
                raise KeyReused(
                    f"Idempotency-Key {request_key!r} was used for a refund of {row.amount} with keep_access "
                    f"{str(row.keep_access).lower()} (admin refund {row.id}): a new refund needs a new key")
        if row is None:
            plan = manual.check_refund(session=session, enrollment_id=enrollment_id, amount=amount)
            # a refund that cannot be made is refused as such, whatever the configuration; one that can needs Stripe
            client = client or stripe_client(settings, purpose="refunds need the Stripe API")
            row = manual.refund_intent(session=session, plan=plan, keep_access=keep_access, reason=reason,
                                       actor=principal.actor, request_key=request_key)
            audit.record(session=session, principal=principal, action="enrollment.refund",
                         target=f"enrollment:{enrollment_id}", reason=reason,
                         details={"admin_refund_id": row.id, "amount": plan.amount, "keep_access": keep_access})
            created = True
        if row.status != "pending":
            return manual.refund_view(row)
        # a row found by its key may have had a call made whose answer never came (its request died)
        call = _Call.of(session, row, retried=not created)
    client = client or stripe_client(settings, purpose="refunds need the Stripe API")
    return _attempt(call, client=client, unit_of_work=unit_of_work)


def settle_pending(*, unit_of_work: UnitOfWork, settings: Any, now: datetime | None = None,
                   client: Any = None) -> dict[str, int]:
    """The `refunds` job: finish each admin refund left `pending` STALE_AFTER or longer (its request died, or
    its caller never retried), as a retry with its key would: ask Stripe for the refund made for it, and make
    it only if there is none. At most SETTLE_LIMIT a run, oldest first; one whose outcome stays unknown waits
    for the next run. Returns how many ended in each status."""
    now = now or utcnow()
    with unit_of_work() as session:
        calls = [_Call.of(session, row, retried=True)
                 for row in manual.stale_pending_refunds(session, before=now - STALE_AFTER, limit=SETTLE_LIMIT)]
    done = {"succeeded": 0, "failed": 0, "pending": 0, "errors": 0}
    if not calls:
        return done
    if client is None and not settings.stripe_api_key:
        log.warning("refunds: %d admin refund(s) pending, and STRIPE_API_KEY is not set to settle them", len(calls))
        return {**done, "pending": len(calls)}
    client = client or stripe_client(settings)
    for call in calls:
        try:
            done[_attempt(call, client=client, unit_of_work=unit_of_work)["status"]] += 1
        except Exception:  # one refund's surprise must not hold every later one back, run after run
            log.exception("refunds: admin refund %s could not be settled; the next run tries again",
                          call.admin_refund_id)
            done["errors"] += 1
    if done["pending"]:
        log.warning("refunds: %d admin refund(s) still pending after a retry; the next run tries again",
                    done["pending"])
    return done


@dataclass(frozen=True)
class _Call:
    """One Stripe call for a pending admin refund, read in a unit of work and made outside any."""
    admin_refund_id: int
    enrollment_id: int
    payment_intent: str
    key: str
    params: dict[str, Any]
    retried: bool  # an earlier call may have made it: ask Stripe first

    @classmethod
    def of(cls, session: Session, row: AdminRefund, *, retried: bool) -> "_Call":
        pi = session.get(StudentCourseEnrollment, row.enrollment_id).stripe_payment_intent_id
        params = {"payment_intent": pi, "amount": row.amount, "reason": "requested_by_customer",
                  "metadata": {"enrollment_id": str(row.enrollment_id), "admin_refund_id": str(row.id),
                               "keep_access": "true" if row.keep_access else "false"}}
        return cls(row.id, row.enrollment_id, pi, row.idempotency_key, params, retried)


def _attempt(call: _Call, *, client: Any, unit_of_work: UnitOfWork) -> dict[str, Any]:
    """Call Stripe (outside any transaction), then record the outcome in a unit of work of its own."""
    import stripe

    refund, error, final = None, None, False
    try:
        # a retry asks Stripe first: the earlier call may have made the refund (its answer lost, or its key
        # pruned after Stripe's 24 hours, when the same key would make a second one)
        refund = _made_for(client, call.payment_intent, call.admin_refund_id) if call.retried else None
        if refund is not None and refund.get("status") in REFUND_NOT_COUNTED:
            # Stripe made it, and it failed (or was canceled): no money went back
            error, final = f"Stripe's refund {refund.get('id')} for it is {refund.get('status')}", True
            refund = None
        elif refund is None:
            refund = _create(client, call.params, call.key, unit_of_work=unit_of_work,
                             admin_refund_id=call.admin_refund_id)
    except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    except stripe.StripeError as exc:
        error = f"{type(exc).__name__}: {exc}"
        # a refusal is final; a 409 is not: the same idempotency key is in flight (the same refund asked
        # twice at once), and Stripe saves no answer for it, so the outcome is still unknown
        final = exc.http_status is not None and 400 <= exc.http_status < 500 and exc.http_status != 409
    if error:
        log.warning("refund of enrollment %s (admin refund %s) failed: %s", call.enrollment_id,
                    call.admin_refund_id, error)
    with unit_of_work() as session:
        row = manual.refund_outcome(session=session, admin_refund_id=call.admin_refund_id, refund=refund,
                                    error=error, final=final)
        return manual.refund_view(row)


def _made_for(client: Any, payment_intent: str, admin_refund_id: int) -> dict[str, Any] | None:
    """The refund Stripe made for this admin refund (its metadata names it), if it made one."""
    listed = client.v1.refunds.list({"payment_intent": payment_intent, "limit": 100})
    for refund in listed.auto_paging_iter():
        refund = refund.to_dict()
        if (refund.get("metadata") or {}).get("admin_refund_id") == str(admin_refund_id):
            return refund
    return None


def _create(client: Any, params: dict[str, Any], key: str, *, unit_of_work: UnitOfWork,
            admin_refund_id: int) -> dict[str, Any] | None:
    """Create the refund with `key`. A 5xx Stripe saved under the key (it replays it to every retry for 24
    hours) means the key can never make it: once Stripe shows no refund made for it, one more call with a fresh
    key (recorded first, so a concurrent retry uses the same one). None: another request finished it."""
    import stripe

    try:
        return client.v1.refunds.create(params, {"idempotency_key": key}).to_dict()
    except stripe.APIError as exc:
        if not saved_server_error(exc):
            raise
        log.warning("Stripe replays a %s saved under refund key %s: checking, then a fresh key", exc.http_status, key)
    refund = _made_for(client, params["payment_intent"], admin_refund_id)
    if refund is not None:
        return refund
    with unit_of_work() as session:
        key = manual.fresh_refund_key(session=session, admin_refund_id=admin_refund_id, spent=key)
    return client.v1.refunds.create(params, {"idempotency_key": key}).to_dict() if key is not None else None
