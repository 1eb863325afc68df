"""Writing outbox messages in the caller's transaction. Delivery is `tasks/delivery` + workers."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session

from db.database import upsert_insert
from db.enums import OutboxChannel
from db.models import OutboxMessage, StudentCourseEnrollment
from db.types import new_public_id, utcnow

ADMINS = "@admins"  # a mail recipient: every address in ADMIN_ALERT_EMAILS, resolved at delivery
# the templates mailed to ADMINS (never to a student; a row pruned before it kept its recipient says so)
ADMIN_TEMPLATES = ("dispute_alert", "refund_failed_alert", "deleted_course_sold_alert", "low_seat_alert",
                   "stripe_drift_alert")

# the mails about a booking, each keyed `mail:<template>:<booking id>:<address digest>` (`tasks.bookings.services`)
BOOKING_MAILS = ("booking_confirmed", "booking_cancelled", "class_cancelled")


def platform_payload(type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": type, "data": data}


def platform_dedupe(dedupe_key: str) -> str:
    return f"platform:{dedupe_key}"


def mail_payload(template: str, context: dict[str, Any]) -> dict[str, Any]:
    return {"template": template, "context": context}


def mail_dedupe(dedupe_key: str, recipient: str) -> str:
    """A mail's dedupe key: its cause and a digest of its address. Never the address itself: the key is unique
    and kept for good, while an address is personal data that erasure and retention remove, and an address
    of any length (up to 254 characters) keeps the key within its column."""
    return f"mail:{dedupe_key}:{address_digest(recipient)}"


def address_digest(recipient: str) -> str:
    return hashlib.sha256(recipient.strip().lower().encode()).hexdigest()[:20]


def booking_mails(booking_ids: Iterable[str]) -> list[ColumnElement[bool]]:
    """Conditions, one of which a mail about one of these bookings meets: its key's exact start
    (`mail:<template>:<booking id>:`), which keeps the booking whatever became of the address (a credit booking's
    mail has no enrollment to be found by, and erasure or retention takes its recipient). Compared as text: no
    pattern, no case folding; one IN per stem length, whatever the number of bookings (an OR per booking outgrows
    SQLite's expression depth)."""
    stems: dict[int, list[str]] = {}
    for booking_id in booking_ids:
        for template in BOOKING_MAILS:
            stem = f"mail:{template}:{booking_id}:"
            stems.setdefault(len(stem), []).append(stem)
    return [and_(OutboxMessage.topic.in_(BOOKING_MAILS), func.substr(OutboxMessage.dedupe_key, 1, length).in_(group))
            for length, group in sorted(stems.items())]


def scrub_address(session: Session, message: OutboxMessage, recipient: str | None, *, erased: bool = False) -> None:
    """Take the address out of a mail's dedupe key where the key holds it (a row written by an older version):
    the digest form takes its place, the key a mail of that cause has now; if a row already has that key (a
    second mail of the cause, written after an upgrade), the row's id is added to stay unique. `erased`: the
    digest goes too (it would link a known address to the row), replaced by the row's id."""
    if not recipient:
        return
    key, digest = message.dedupe_key, address_digest(recipient)
    stem = next((key[:-len(form)] for form in (recipient, digest) if key.endswith(f":{form}")), None)
    if stem is None:
        return
    scrubbed = f"{stem}erased-{message.id}" if erased else stem + digest
    if scrubbed != key and not erased and \
            session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedupe_key == scrubbed)) is not None:
        scrubbed = f"{scrubbed}:{message.id}"
    message.dedupe_key = scrubbed


def add_message(
    *,
    session: Session,
    channel: OutboxChannel,
    topic: str,
    payload: dict[str, Any],
    dedupe_key: str,
    recipient: str | None = None,
    enrollment_id: int | None = None,
    fresh: bool = False,
    sequenced: bool = False,
    former_key: str | None = None,
) -> OutboxMessage:
    """Record a message once per dedupe key (its cause); a repeat returns the existing row.

    `sequenced`: the message takes the enrollment's next `sequence` (platform events).

    `former_key`: the key an older version wrote the same message under; a row under it is the message too.

    `fresh`: the cause was created in this transaction, so no message can exist for it yet (the
    look-up is skipped; the unique dedupe key still refuses a second row).
    """
    keys = [dedupe_key, former_key] if former_key else [dedupe_key]
    existing = None if fresh else session.scalar(select(OutboxMessage).where(OutboxMessage.dedupe_key.in_(keys))
                                                 .order_by(OutboxMessage.id).limit(1))
    if existing is not None:
        return existing
    message = OutboxMessage(
        public_id=new_public_id(),
        sequence=next_sequence(session, enrollment_id) if sequenced else None,
        channel=channel,
        topic=topic,
        payload=payload,
        dedupe_key=dedupe_key,
        recipient=recipient,
        enrollment_id=enrollment_id,
    )
    session.add(message)
    session.flush()
    return message


def add_platform_event(
    *, session: Session, type: str, data: dict[str, Any], dedupe_key: str, enrollment_id: int | None = None,
    fresh: bool = False,
) -> OutboxMessage:
    """An outbound platform event; its random `public_id` is the event id the receiver dedupes on."""
    return add_message(
        session=session,
        channel=OutboxChannel.PLATFORM,
        topic=type,
        payload=platform_payload(type, data),
        dedupe_key=platform_dedupe(dedupe_key),
        enrollment_id=enrollment_id,
        fresh=fresh,
        sequenced=True,
    )


FIRST_SEQUENCE = 1  # an event about no enrollment (a booking refused for want of one) is alone in its stream


def next_sequence(session: Session, enrollment_id: int | None) -> int:
    """The next `sequence` of the enrollment's platform events: one UPDATE … RETURNING on its row, which
    also holds the row lock until commit, so two writers about one enrollment take turns."""
    if enrollment_id is None:
        return FIRST_SEQUENCE
    table = StudentCourseEnrollment.__table__
    value = session.execute(update(table).where(table.c.id == enrollment_id)
                            .values(last_event_sequence=table.c.last_event_sequence + 1)
                            .returning(table.c.last_event_sequence)).scalar_one_or_none()
    return FIRST_SEQUENCE if value is None else value


def add_mail(
    *,
    session: Session,
    template: str,
    recipient: str,
    context: dict[str, Any],
    dedupe_key: str,
    enrollment_id: int | None = None,
    fresh: bool = False,
) -> OutboxMessage:
    return add_message(
        session=session,
        channel=OutboxChannel.MAIL,
        topic=template,
        payload=mail_payload(template, context),
        dedupe_key=mail_dedupe(dedupe_key, recipient),
        recipient=recipient,
        enrollment_id=enrollment_id,
        fresh=fresh,
        former_key=f"mail:{dedupe_key}:{recipient}",  # keys held the address itself before they held its digest
    )


def add_mails(
    *, session: Session, template: str, mails: list[tuple[str, dict[str, Any], str, int | None]]
) -> int:
    """Many mails of one template at once — (recipient, context, dedupe key, enrollment id) each — as one
    executemany, which SQLAlchemy sends as multi-row inserts of a statement compiled once; a dedupe key
    already present is skipped. Returns how many rows were new."""
    if not mails:
        return 0
    table = OutboxMessage.__table__
    now = utcnow()
    rows = [dict(public_id=new_public_id(), channel=OutboxChannel.MAIL.value, topic=template, recipient=recipient,
                 payload=mail_payload(template, context), dedupe_key=mail_dedupe(dedupe_key, recipient),
                 enrollment_id=enrollment_id, status="pending", attempts=0, created_at=now, next_attempt_at=now)
            for recipient, context, dedupe_key, enrollment_id in mails]
    statement = (upsert_insert(session)(table).on_conflict_do_nothing(index_elements=["dedupe_key"])
                 .returning(table.c.id))
    return len(session.execute(statement, rows).all())
