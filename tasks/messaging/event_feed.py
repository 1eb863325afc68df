"""The catch-up feed of outbound platform events (`GET /v1/events?after=<cursor>&limit=<n>`).

Every platform event ever written, from the outbox itself: a pushed event and a read one are the same
row, the same envelope, the same id. Row ids are handed out at insert, not at commit, so a row with a
lower id can become visible after a higher one: reading by row id could pass a row for good. Instead
each committed row gets a `feed_position` after the fact (`assign_positions`, one assigner at a time,
in its own short transaction before every read): positions only ever grow and each assignment is
committed before the next one starts, so a reader always sees a gap-free prefix and never misses a
row behind its cursor. The feed's order is therefore the order in which events became visible,
which for one enrollment is also the order of its `sequence`.

The cursor is opaque to the platform (base64url of "p<position>").
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, func, literal, select, text, update
from sqlalchemy.orm import Session

from db.enums import OutboxChannel
from db.models import OutboxMessage
from tasks.messaging.delivery import outbound_event
from tasks.errors import ValidationFailed
from tasks.events import INT64_MAX

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
ASSIGN_BATCH = 5000
FEED_LOCK = 0x636F7572_73656665  # pg_advisory_xact_lock key: one position assigner at a time


class InvalidCursor(ValidationFailed):
    """Raised when `after` is not a cursor this feed handed out."""


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next: str


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p") or not (raw[1:].isascii() and raw[1:].isdigit()):  # int() reads " 1", "٣"
            raise ValueError(raw)
        position = int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursor(f"after: {cursor!r} is not a cursor of this feed", "after") from None
    if not 0 <= position <= INT64_MAX:
        raise InvalidCursor(f"after: {cursor!r} is not a cursor of this feed", "after")
    return position


def assign_positions(*, session: Session, limit: int = ASSIGN_BATCH) -> int:
    """Give the committed platform events that have none the next positions, in row-id order.

    Run it in a transaction of its own and commit before reading. A row the relay holds locked for
    an instant is waited for, not skipped: skipping it could put an enrollment's later event first."""
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": FEED_LOCK})
    unassigned = (OutboxMessage.channel == OutboxChannel.PLATFORM, OutboxMessage.feed_position.is_(None))
    last = session.scalar(select(func.coalesce(func.max(OutboxMessage.feed_position), 0)))
    numbered = (select(OutboxMessage.id.label("id"),
                       (literal(last, BigInteger) + func.row_number().over(order_by=OutboxMessage.id))
                       .label("position"))
                .where(*unassigned).order_by(OutboxMessage.id).limit(limit).subquery())
    # one statement for the whole batch (ix_outbox_message_feed_unassigned finds the rows)
    return session.execute(update(OutboxMessage).where(OutboxMessage.id == numbered.c.id)
                           .values(feed_position=numbered.c.position)
                           .execution_options(synchronize_session=False)).rowcount


def read(*, session: Session, after: str | None = None, limit: int = DEFAULT_LIMIT) -> Page:
    """Up to `limit` events after the cursor, and the cursor to ask with next (the same one when
    nothing new is there yet)."""
    position = decode_cursor(after)
    rows = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.channel == OutboxChannel.PLATFORM, OutboxMessage.feed_position > position)
        .order_by(OutboxMessage.feed_position).limit(limit)
    ).all()
    if not rows and position > 0:
        # a cursor past the newest event was never given by this feed (another installation's, or one kept
        # across a database restored from a backup): polling with it would skip every event up to it, silently
        newest = session.scalar(select(func.max(OutboxMessage.feed_position))) or 0
        if position > newest:
            raise InvalidCursor(f"after: {after!r} is past this feed's newest event ({newest}): read the feed again "
                                "from the start (no `after`); event ids tell what was seen", "after")
    events = [outbound_event(public_id=r.public_id, topic=r.topic, payload=r.payload or {},
                             created_at=r.created_at, sequence=r.sequence) for r in rows]
    return Page(events=events, next=encode_cursor(rows[-1].feed_position if rows else position))
