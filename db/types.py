"""Column types shared by the models."""
from __future__ import annotations

import enum
import re
import uuid
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Enum, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# an e-mail address inside free text (an error message, a log line), which is neither stored nor logged as such.
# A match starts only where the local part can begin (the lookbehind): the leftmost match always does, and without
# it a long run of such characters with no `@` was scanned again from each of its positions, time growing with the
# square of its length (a 70 KB query string in an access-log line held a worker for 15 s).
EMAIL_IN_TEXT = re.compile(r"(?<![\w.+'-])[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


def redact_emails(text: str) -> str:
    return EMAIL_IN_TEXT.sub("<e-mail>", text)


class ErrorText(TypeDecorator):
    """An error message as stored (`last_error`): whatever raised it (a driver, an SMTP server quoting the
    address it refused), e-mail addresses are replaced before the row is written."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else redact_emails(value)


JSONType = JSON().with_variant(JSONB(), "postgresql")


def enum_column(enum_cls: type[enum.Enum], name: str) -> Enum:
    """An enum stored by value as VARCHAR with a named CHECK constraint (portable)."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        length=max(len(m.value) for m in enum_cls) + 8,
        values_callable=lambda cls: [m.value for m in cls],
    )


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_public_id() -> str:
    """A random id (128 bits, hex) for what leaves this installation: never a local row id."""
    return uuid.uuid4().hex
