"""RETENTION_DAYS: raw event payloads and mail bodies older than this are pruned.

What stays: every row and its ids (an inbox row's source, event id, type, subject, status and times; a
mail's topic, status and times), a SHA-256 of the pruned content (so a copy held elsewhere can still be
matched), and the financial facts of a Stripe event's object (its id, amounts, currency, payment intent,
charge, status, creation time, course or package code). Enrollments, purchases, refunds, disputes and
the ledger are the financial record and are kept as they are.

The transition log keeps every move of an enrollment, a step's progress, a booking, a package
purchase, a refund and a dispute: the record of what a student was owed and got, and the evidence of a
dispute. A message's delivery moves (pending → sending → pending → … → sent) are mechanics, and the
bulk of the log: those of a message that ended (`sent`, `dead` or `expired`) are deleted once older than
RETENTION_DAYS; the message's row keeps its final status, attempts, last error and sent time.

Only rows that ended are pruned: an inbox row `processed`, `ignored` or `failed` (anything pending,
processing or waiting is still to be applied), a mail `sent`, `dead` or `expired`. A `failed` row is
replayable until it is pruned; then nothing is left to run, and a replay is refused
(`tasks.inbox.admin.PayloadPruned`). One that failed giving up waiting forgets what it waited for, so that
arriving later does not wake a payload that is gone.
Outbound platform events keep their data (the platform's catch-up feed serves them).

An erased student's subjects (`ErasedSubject`, written by `tasks.lifecycle.erasure`, and by a checkout applied
while they are erased) are pruned whatever their age: an event about them applied or ignored since the erasure
(still to be applied then, or arriving later) is pruned by the next run; one that failed stays replayable, as
any failed row, until it is applied or pruned by age. A subject is kept RETENTION_DAYS after its erasure (or
after that checkout); an event about it arriving later is pruned by age.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, case, cast, delete, select
from sqlalchemy.orm import Session

from db.enums import InboxSource, InboxStatus, OutboxChannel, OutboxStatus
from db.models import ErasedSubject, InboxEvent, OutboxMessage, TransitionLog
from db.types import utcnow
from tasks.inbox.store import PRUNED, is_pruned, not_pruned
from tasks.machines import OUTBOX
from tasks.messaging.outbox import ADMINS, scrub_address

BATCH = 500
# the fields of a Stripe object that are financial facts, kept when its payload is pruned
STRIPE_FACTS = ("id", "object", "amount", "amount_total", "amount_subtotal", "amount_refunded", "amount_captured",
                "currency", "payment_intent", "charge", "status", "payment_status", "created", "livemode",
                "client_reference_id", "refunded", "reason")
METADATA_FACTS = ("kind", "course_code", "package_code")


# inbox rows that ended: their payload is pruned once older than RETENTION_DAYS (db.models.inbox.EVENTS_TO_PRUNE)
ENDED_EVENTS = (InboxStatus.PROCESSED, InboxStatus.IGNORED, InboxStatus.FAILED)
APPLIED_EVENTS = (InboxStatus.PROCESSED, InboxStatus.IGNORED)  # ended, and not to be replayed

# transitions that are delivery mechanics, not facts: pruned once their message ended
DELIVERY_ENTITY = OUTBOX.entity
ENDED = (OutboxStatus.SENT, OutboxStatus.DEAD, OutboxStatus.EXPIRED)


@dataclass
class Pruned:
    events: int = 0
    mails: int = 0
    transitions: int = 0
    erased: int = 0  # events about erased students, pruned before their age

    def as_dict(self) -> dict[str, int]:
        return {"events_pruned": self.events, "mails_pruned": self.mails, "transitions_pruned": self.transitions,
                "erased_events_pruned": self.erased}

    def add(self, other: "Pruned") -> None:
        for kind in fields(self):
            setattr(self, kind.name, getattr(self, kind.name) + getattr(other, kind.name))

    def full(self, batch: int | None = None) -> bool:
        """A kind filled its batch: there may be more to prune."""
        return max(astuple(self)) >= (batch or BATCH)


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _id(value: Any) -> Any:
    return value.get("id") if isinstance(value, dict) else value


def stripe_facts(payload: dict[str, Any]) -> dict[str, Any]:
    obj = ((payload.get("data") or {}).get("object")) or {}
    if not isinstance(obj, dict):
        return {}
    facts = {name: _id(obj[name]) for name in STRIPE_FACTS if name in obj}
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    facts.update({f"metadata.{k}": metadata[k] for k in METADATA_FACTS if k in metadata})
    return facts


def pruned_payload(payload: Any, *, now: datetime, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    kept = {PRUNED: now.isoformat(), "sha256": digest(payload)}
    if facts:
        kept["facts"] = facts
    return kept


def prune_event(event: InboxEvent, *, now: datetime) -> bool:
    event.waiting_for = None  # one that gave up waiting must not wake on a payload that is gone
    if is_pruned(event.payload):
        return False
    facts = stripe_facts(event.payload) if event.source == InboxSource.STRIPE else None
    event.payload = pruned_payload(event.payload, now=now, facts=facts)
    return True


def prune_mail(session: Session, message: OutboxMessage, *, now: datetime) -> bool:
    if is_pruned(message.payload):
        return False
    message.payload = pruned_payload({"recipient": message.recipient, "payload": message.payload}, now=now)
    if message.recipient != ADMINS:  # the admins' alias names no one: an alert stays told apart from a student's mail
        scrub_address(session, message, message.recipient)
        message.recipient = None
    return True


def prune(*, session: Session, retention_days: int, now: datetime | None = None, batch: int = BATCH) -> Pruned:
    """One batch of each kind, oldest first; the job runs again until nothing is left to prune.

    Each batch is found through a partial index of what is left to do (migrations 0014, 0019): the rows pruned
    before are not in it, so a batch reads its own rows, however much has been kept. Its rows are locked as read
    (FOR UPDATE, SKIP LOCKED on PostgreSQL; the next run takes a row held now): an admin's replay or retry, or a
    wake, waits for the prune and then finds nothing left to run, instead of making a row pending whose payload
    the prune then takes."""
    now = now or utcnow()
    cutoff = now - timedelta(days=retention_days)
    done = Pruned()
    events = session.scalars(select(InboxEvent).where(
        InboxEvent.status.in_(ENDED_EVENTS), not_pruned(session, InboxEvent.payload),
        InboxEvent.received_at < cutoff)
        .order_by(InboxEvent.received_at, InboxEvent.id).limit(batch).with_for_update(skip_locked=True))
    done.events = sum(prune_event(e, now=now) for e in events)
    # sent and dead as the partial index states them; expired mails are few, found through the status index
    for ended in ((OutboxStatus.SENT, OutboxStatus.DEAD), (OutboxStatus.EXPIRED,)):
        mails = session.scalars(select(OutboxMessage).where(
            OutboxMessage.channel == OutboxChannel.MAIL, OutboxMessage.status.in_(ended),
            not_pruned(session, OutboxMessage.payload), OutboxMessage.created_at < cutoff)
            .order_by(OutboxMessage.created_at, OutboxMessage.id).limit(batch).with_for_update(skip_locked=True))
        done.mails += sum(prune_mail(session, m, now=now) for m in mails)
    done.erased = prune_erased(session=session, cutoff=cutoff, now=now, batch=batch)
    session.flush()
    done.transitions = prune_delivery_moves(session=session, cutoff=cutoff, batch=batch)
    return done


def prune_erased(*, session: Session, cutoff: datetime, now: datetime, batch: int = BATCH) -> int:
    """One batch of the applied or ignored events about erased students' subjects whose payload is still held,
    whatever their age (a failed one stays replayable); and the subjects erased before `cutoff` forgotten (the
    age rule prunes what is left of them)."""
    events = session.scalars(
        select(InboxEvent).join(ErasedSubject, ErasedSubject.subject == InboxEvent.subject)
        .where(InboxEvent.status.in_(APPLIED_EVENTS), not_pruned(session, InboxEvent.payload))
        .order_by(InboxEvent.id).limit(batch).with_for_update(of=InboxEvent, skip_locked=True))
    pruned = sum(prune_event(e, now=now) for e in events)
    old = list(session.scalars(select(ErasedSubject.subject).where(ErasedSubject.erased_at < cutoff)
                               .order_by(ErasedSubject.erased_at).limit(batch)))
    if old:
        session.execute(delete(ErasedSubject).where(ErasedSubject.subject.in_(old)))
    return pruned


def prune_delivery_moves(*, session: Session, cutoff: datetime, batch: int = BATCH) -> int:
    """Delete one batch of delivery moves older than `cutoff` of messages that ended; never anything else.

    The moves are taken oldest first through their own index, each checked against its message's row by
    primary key (a move of a message still being delivered is kept, whatever its age)."""
    numeric = TransitionLog.entity == DELIVERY_ENTITY
    if session.get_bind().dialect.name == "postgresql":  # a malformed id is kept, not a failed cast (SQLite: 0)
        numeric = numeric & TransitionLog.entity_id.regexp_match("^[0-9]{1,18}$")
    message_id = case((numeric, cast(TransitionLog.entity_id, BigInteger)))
    ended = select(OutboxMessage.id).where(OutboxMessage.id == message_id, OutboxMessage.status.in_(ENDED))
    ids = list(session.scalars(select(TransitionLog.id).where(
        TransitionLog.entity == DELIVERY_ENTITY, TransitionLog.at < cutoff, ended.exists())
        .order_by(TransitionLog.at, TransitionLog.id).limit(batch)))
    if ids:
        session.execute(delete(TransitionLog).where(TransitionLog.id.in_(ids)))
    return len(ids)
