"""The common purchase in three statements: a new, paid course checkout on PostgreSQL.

Most events the pipeline sees are `checkout.session.completed` for a course, paid, with
`metadata.course_code` and a `client_reference_id`, seen for the first time. For those, this module
does what the inbox runner + `tasks.purchases.fulfilment.fulfil_checkout` do — the same rows, the
same keys, the same payloads, built by the same functions — in plain SQL on a psycopg connection
(`attempt`): in the runner's own transaction (`process`, a runner shortcut), or in a transaction of its
own that the worker opens (`workers.inbox_runs.run_fast_purchase`):

1. claim the inbox row (`FOR UPDATE SKIP LOCKED`);
2. take the subject's and the payment's advisory locks, create the buyer if new, read the course
   (steps, bundle) and draw the enrollment's id;
3. one statement with data-modifying CTEs: the enrollment (`ON CONFLICT DO NOTHING`), its first
   transition, a progress row per step, the bundle grants, `enrollment.created` and the welcome mail,
   the payment kept as an erased buyer's subject, the inbox row `processed`, and parked events about the
   payment woken — all of it only if the enrollment row was new.

`process` answers None whenever the event is anything else — another type, unpaid, no metadata, a
package, an unknown course, a buyer known only by e-mail, a redelivery whose enrollment exists (the
ORM path settles recorded refunds and disputes) — and the caller runs the general path in the same
transaction (the row and subject locks are kept). After a refusal by the database the transaction is
rolled back, the fallback is counted, and the general path starts over, claiming the row again (at most
an enrollment id was drawn from the sequence, as any rolled-back insert draws one).
What the general path does for these events is the specification; `tests/tasks/purchases/test_fast_purchase.py`
checks that both write the same rows.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from db import jsoncodec
from db.enums import CreditType, InboxSource
from db.models import InboxEvent
from db.types import new_public_id, utcnow
from tasks.enrollments import services as enrollments
from tasks.events import stripe_subject
from tasks.inbox.context import HandlerContext, lock_key
from tasks.inbox.parking import RUNNABLE, WAKEABLE_SQL
from tasks.inbox.runner import Outcome, Result
from tasks.ledger.causes import Keys
from tasks.messaging import outbox
from tasks.purchases import shapes
from tasks.purchases.fulfilment import COMPLETED, NOT_ONE_TIME, Product, _metadata, amounts, checkout_email
from tasks.stripe_api import mode_mismatch

log = logging.getLogger("coursepipe.fast_purchase")

RUNNABLE_VALUES = {status.value for status in RUNNABLE}

# only a paid-checkout candidate is claimed here: any other event is left to the runner's own claim untouched
_CLAIM = ("SELECT source, event_id, type, subject, payload, status, attempts, received_at"
          " FROM inbox_event WHERE id = %s AND source = 'stripe' AND type = 'checkout.session.completed'"
          " FOR UPDATE SKIP LOCKED")

# the subject's and the payment's advisory locks (in the order given); the buyer (created if new; a
# known one is read as stored), the course as it is now, a new id. One round trip: the locks guard
# the next statement (it runs on a snapshot taken after them), not this one's reads — the course is
# not the subject's, and a buyer inserted concurrently and not yet visible here sends the purchase
# to the general path (`buyer is None` below). The locks are taken even when the course is unknown
# (the LEFT JOIN keeps the aggregate's one row), so the general path may count on them.
_PREPARE = """
WITH lk AS (
    SELECT count(pg_advisory_xact_lock(k.key)) AS n FROM unnest(%(locks)s::bigint[]) AS k(key)  -- in array order
), st AS (
    INSERT INTO student (id, email, name, created_at, updated_at)
    VALUES (%(student)s, %(email)s, %(name)s, %(now)s, %(now)s)
    ON CONFLICT (id) DO NOTHING RETURNING email, name
), pr AS (
    SELECT id, code, title, status, stripe_product_id, stripe_price_id FROM course_program
    WHERE code = %(code)s AND (%(sold)s::bigint IS NULL OR id = %(sold)s::bigint)  -- the row sold, when named
      AND deleted_at IS NULL  -- a deleted course's sale goes the general way, which alerts the studio
      -- the price charged, when named, is the current one (an earlier price: the general path looks it up)
      AND (%(price)s::text IS NULL OR stripe_price_id = %(price)s::text)
    LIMIT 1
)
SELECT pr.id, pr.code, pr.title, pr.status,
    (SELECT coalesce(json_agg(json_build_array(s.id, s.label, s.title, s.position) ORDER BY s.position), '[]')
       FROM course_step s WHERE s.program_id = pr.id AND s.deleted_at IS NULL),
    (SELECT coalesce(json_agg(json_build_object('component_id', c.id, 'kind', c.kind, 'quantity', c.quantity)
                              ORDER BY c.id), '[]')
       FROM course_bundle_component c WHERE c.program_id = pr.id AND c.deleted_at IS NULL),
    CASE WHEN pr.id IS NOT NULL THEN nextval(pg_get_serial_sequence('student_course_enrollment', 'id')) END,
    (SELECT json_build_array(email, name, false) FROM st),
    -- a known buyer under the ledger's lock (`credits.lock_student`): an erasure, or an admin's enrolment by hand
    -- (which checks under that lock that the student holds no enrollment in the course), comes wholly before or after
    (SELECT json_build_array(email, name, erased_at IS NOT NULL) FROM student WHERE id = %(student)s FOR NO KEY UPDATE),
    pr.stripe_product_id, pr.stripe_price_id
FROM lk LEFT JOIN pr ON true
"""

_FULFIL = f"""
WITH e AS (
    INSERT INTO student_course_enrollment (id, student_id, program_id, status, stripe_checkout_session_id,
        stripe_payment_intent_id, stripe_product_id, stripe_price_id, amount_total, amount_subtotal, amount_tax,
        amount_discount, currency, amount_refunded, fulfilment_metadata, activated_at, created_at, updated_at,
        last_event_sequence)
    VALUES (%(id)s, %(student)s, %(program)s, 'active', %(cs)s, %(pi)s, %(product)s, %(price)s, %(amount_total)s,
        %(amount_subtotal)s, %(amount_tax)s, %(amount_discount)s, %(currency)s, 0, %(metadata)s::jsonb, %(now)s,
        %(now)s, %(now)s, 1)
    ON CONFLICT (stripe_checkout_session_id) DO NOTHING RETURNING id
), t AS (
    INSERT INTO transition_log (entity, entity_id, from_status, to_status, cause, enrollment_id, at)
    SELECT 'enrollment', e.id::text, NULL, 'active', %(cause)s, e.id, %(now)s FROM e
), p AS (
    INSERT INTO student_course_progress (enrollment_id, step_id, status, skipped_ahead, created_at, updated_at)
    SELECT e.id, s.step, 'unbooked', false, %(now)s, %(now)s FROM e, unnest(%(steps)s::bigint[]) AS s(step)
), l AS (
    INSERT INTO credit_ledger_entry (idempotency_key, student_id, credit_type, entry_type, quantity, cause,
        enrollment_id, created_at)
    SELECT g.k, %(student)s, g.t, 'grant', g.q, %(bundle_cause)s, e.id, %(now)s
    FROM e, jsonb_to_recordset(%(grants)s::jsonb) AS g(k text, t text, q int)
), o AS (
    INSERT INTO outbox_message (public_id, dedupe_key, channel, topic, recipient, payload, status, attempts,
        enrollment_id, sequence, created_at, next_attempt_at)
    SELECT m.u, m.d, m.c, m.t, m.r, m.p, 'pending', 0, e.id, m.s, %(now)s, %(now)s
    FROM e, jsonb_to_recordset(%(messages)s::jsonb) AS m(u text, d text, c text, t text, r text, p jsonb, s int)
), x AS (  -- an erased buyer's payment: forgotten once applied (`fulfil_checkout`)
    INSERT INTO erased_subject (subject, student_id, erased_at)
    SELECT es.subject, %(student)s, %(now)s FROM e, unnest(%(erased_subjects)s::text[]) AS es(subject)
    ON CONFLICT (subject) DO UPDATE SET student_id = excluded.student_id, erased_at = excluded.erased_at
), i AS (
    UPDATE inbox_event SET status = 'processed', attempts = attempts + 1, processed_at = %(now)s,
        last_error = NULL, waiting_for = NULL
    WHERE id = %(inbox_id)s AND EXISTS (SELECT 1 FROM e)
), w AS (
    UPDATE inbox_event SET status = 'pending', waiting_for = NULL, processed_at = NULL
    WHERE status IN ({WAKEABLE_SQL}) AND waiting_for = ANY(%(keys)s::text[]) AND EXISTS (SELECT 1 FROM e)
    RETURNING id
)
SELECT (SELECT id FROM e), ARRAY(SELECT id FROM w ORDER BY id)
"""


def candidate(event_type: str, checkout: dict[str, Any]) -> bool:
    """Whether the event can only be the common purchase (the rest is decided by the database)."""
    if event_type != COMPLETED:
        return False  # checked first: the ingress asks this of every Stripe event
    if shapes.checkout_problem(checkout):
        return False  # malformed: the general path records it
    metadata = checkout.get("metadata") or {}
    return (checkout.get("payment_status") == "paid"
            and checkout.get("mode") not in NOT_ONE_TIME and bool(checkout.get("id"))
            and metadata.get("kind", "course") == "course" and bool(metadata.get("course_code"))
            and bool(checkout.get("client_reference_id") or metadata.get("student_id")))


# a refusal by the database (a constraint, a lock timeout, a column the SQL does not know): the general
# path runs instead and records whatever it meets; any other error is a defect and is not hidden
DATABASE_ERRORS = (psycopg.Error,)


def process(ctx: HandlerContext, inbox_id: int) -> Result | None:
    """Run a fresh paid course purchase in the runner's transaction; None if this event is not one (the
    runner goes on with the general path). The result is PROCESSED, or SKIPPED (the row is already
    final). Locks taken are added to `ctx.locks`, as the runner's own are.
    """
    session = ctx.session
    if session.get_bind().dialect.name != "postgresql":
        return None
    conn = session.connection().connection.driver_connection  # the session's own transaction
    try:
        return attempt(conn, inbox_id, ctx.locks, settings=ctx.settings)
    except DATABASE_ERRORS as exc:  # the general path runs again from the start and records it
        gave_up(inbox_id, exc)
        session.rollback()
        ctx.rolled_back()
        return None


def is_purchase(source: str, event_type: str, payload: dict[str, Any]) -> bool:
    """What the ingress tells the worker with the message: this event looks like a new purchase."""
    return source == "stripe" and candidate(event_type, (payload.get("data") or {}).get("object") or {})


def purchases_among(session: Session, ids: list[int]) -> set[int]:
    """Which of these stored rows the ingress marks as purchases (`is_purchase` on the stored payload): a row
    sent again (by the sweeper, after its message was lost) then takes the path its first message took."""
    if not ids:
        return set()
    rows = session.execute(select(InboxEvent.id, InboxEvent.payload).where(
        InboxEvent.id.in_(ids), InboxEvent.source == InboxSource.STRIPE, InboxEvent.type == COMPLETED))
    return {inbox_id for inbox_id, payload in rows if is_purchase(InboxSource.STRIPE.value, COMPLETED, _json(payload))}


def gave_up(inbox_id: int, exc: Exception) -> None:
    # loud: a fast path that fails every time (a new NOT NULL column it does not write) costs speed only
    log.warning("fast path gave inbox event %s to the general path after an error: %s", inbox_id, exc)


def attempt(conn, inbox_id: int, held: set[str], *, settings: Any = None) -> Result | None:
    """The fast path on a psycopg connection in a transaction; raises on any error (the caller rolls back).

    An event of the other Stripe mode than `settings`' key is left to the general path (which ignores it).
    """
    row = conn.execute(_CLAIM, (inbox_id,)).fetchone()
    if row is None:
        return None  # another type, an unknown id, or locked by another worker: the runner's claim decides
    if row[5] not in RUNNABLE_VALUES:
        return Result(Outcome.SKIPPED)
    source, event_id, type_, subject, payload, _status, _attempts, received_at = row
    summary = (source, event_id, type_, subject, received_at)
    payload = _json(payload)
    checkout = (payload.get("data") or {}).get("object") or {}
    if not candidate(type_, checkout) or mode_mismatch(settings, payload):
        return None
    pi = checkout.get("payment_intent")
    keys = sorted({k for k in (subject, f"payment:{pi}" if pi else None) if k})
    # the subject's lock, and the payment's that `provides` takes in the general path: taken by _PREPARE
    locks = [lock_key(key) for key in keys if key not in held]
    held.update(keys)
    done = _fulfil(conn, checkout, event_id, inbox_id, keys, locks)
    if done is None:
        return None
    return Result(Outcome.PROCESSED, woken=done, summary=summary)


# Arrays go as PostgreSQL array literals (cast in the SQL): psycopg would inspect a Python list's
# elements to choose a dumper on every call.
def _int_array(values: list[int]) -> str:
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def _text_array(values: list[str]) -> str:
    # every element quoted, with backslash and double quote escaped (PostgreSQL's array input syntax)
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _fulfil(conn, checkout: dict[str, Any], event_id: str, inbox_id: int, keys: list[str],
            locks: list[int]) -> list[int] | None:
    metadata = checkout.get("metadata") or {}
    student_id = str(checkout.get("client_reference_id") or metadata.get("student_id"))
    details = checkout.get("customer_details") or {}
    now = utcnow()
    found = conn.execute(_PREPARE, {"locks": _int_array(locks), "student": student_id, "email": checkout_email(checkout),
                                    "name": details.get("name"), "now": now, "code": metadata["course_code"],
                                    "sold": shapes.listing_id(metadata, "course"),
                                    "price": shapes.sold_price(metadata)}).fetchone()
    if found[0] is None:
        # unknown or deleted course (or an id naming another row, or a price not its current one): the general
        # path decides (the locks are held)
        return None
    program_id, code, title, program_status, steps, bundle, enrollment_id, inserted, stored, product, price = found
    steps, bundle, buyer = _json(steps), _json(bundle), _json(inserted) or _json(stored)
    if buyer is None:
        return None  # created by a concurrent transaction after this statement's snapshot
    buyer_email, buyer_name, buyer_erased = buyer

    cause = f"checkout:{checkout['id']}"
    fulfilment_metadata = _metadata(checkout, COMPLETED, event_id, Product(identified_by="metadata"), "paid",
                                    buyer_erased=buyer_erased)
    fulfilment_metadata["bundle"] = bundle
    fulfilment_metadata["program_status_at_fulfilment"] = program_status
    owed = sorted((t.value, q) for t, q in enrollments.owed_by_snapshot(bundle).items() if q > 0)
    bundle_cause = enrollments.bundle_cause(enrollment_id)
    grants = [{"k": Keys.grant(bundle_cause, CreditType(t)), "t": t, "q": q} for t, q in owed]

    # enrollment.created is the new enrollment's first event: sequence 1 (last_event_sequence starts at 1)
    messages = [{
        "u": new_public_id(), "s": outbox.FIRST_SEQUENCE, "d": outbox.platform_dedupe(enrollments.CREATED_DEDUPE.format(enrollment_id)), "c": "platform",
        "t": "enrollment.created", "r": None,
        "p": outbox.platform_payload("enrollment.created", enrollments.created_event_data(
            enrollment_id=enrollment_id, student_id=student_id, course_code=code, status="active",
            steps=[(s[0], s[1], s[3]) for s in steps], bundle=dict(owed))),
    }]
    if buyer_email:
        messages.append({
            "u": new_public_id(), "s": None, "d": outbox.mail_dedupe(enrollments.WELCOME_DEDUPE.format(enrollment_id), buyer_email), "c": "mail",
            "t": "enrollment_welcome", "r": buyer_email,
            "p": outbox.mail_payload("enrollment_welcome", enrollments.welcome_context(
                student_name=buyer_name, course_title=title, course_code=code,
                steps=[(s[1], s[2]) for s in steps], bundle=bundle)),
        })
    pi = checkout.get("payment_intent")
    created, woken = conn.execute(_FULFIL, {
        "id": enrollment_id, "student": student_id, "program": program_id, "cs": checkout["id"], "pi": pi,
        "product": product, "price": price, **amounts(checkout),
        "currency": checkout.get("currency"), "metadata": jsoncodec.dumps(fulfilment_metadata), "now": now,
        "cause": cause, "steps": _int_array([s[0] for s in steps]), "bundle_cause": str(bundle_cause),
        "grants": jsoncodec.dumps(grants), "messages": jsoncodec.dumps(messages), "inbox_id": inbox_id,
        "keys": _text_array(keys),
        "erased_subjects": _text_array([stripe_subject(COMPLETED, checkout)] if buyer_erased else []),
    }).fetchone()
    if created is None:
        return None  # a redelivery: the enrollment exists, the general path settles it
    return list(woken)
