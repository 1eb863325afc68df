"""Inbound event shapes: the platform's (validated with pydantic) and the subject of each event.

The subject is what an event is about; events with the same subject are processed one at a time.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StringConstraints,
    ValidationError, field_validator,
)

Id = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
# the columns these land in are 32-bit on PostgreSQL (SQLite would take more: refuse it on both)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


# A plain ASCII address that email_validator accepts (tests/tasks/test_events.py checks the implication on
# generated addresses): dot-atoms of letters, digits, `_`, `+`, `-` before the @; after it, two or more LDH
# labels without `--` (no IDNA question arises) ending in an alphabetic top-level label. Anything else,
# or a special-use top-level domain, is left to email_validator.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@(?:[A-Za-z0-9](?:-?[A-Za-z0-9])*\.)+[A-Za-z]+")
_LEFT_TO_THE_LIBRARY = frozenset({"arpa", "invalid", "local", "localhost", "onion"})


def plain_address(value: str) -> bool:
    """True for an address the fast check accepts (a sufficient condition, not a necessary one)."""
    if len(value) > 254 or not _PLAIN_ADDRESS.fullmatch(value):
        return False
    local, _, domain = value.partition("@")
    labels = domain.split(".")
    return len(local) <= 64 and len(domain) <= 253 and all(len(label) <= 63 for label in labels) \
        and labels[-1].lower() not in _LEFT_TO_THE_LIBRARY


def mail_address(value: str) -> str:
    """A pydantic validator body: exactly one addr-spec (`name@domain`), no display name, list or header.

    Syntax only (no DNS). `.test` and other special-use domains pass: they are what test and local
    set-ups (Mailpit) use, and deliverability is the mail server's to judge. The common plain address is
    accepted by a regular expression (2 µs, against email_validator's ~17 µs at every webhook).
    """
    if plain_address(value):
        return value
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(f"not one email address: {exc}") from None
    return value


def known_timezone(value: str) -> str:
    """A pydantic validator body: the value if it names an IANA timezone."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA timezone {value!r}") from None
    return value

class _Data(BaseModel):
    model_config = ConfigDict(extra="allow")


EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(9000, 1, 1, tzinfo=timezone.utc)


def _aware(value: datetime) -> datetime:
    """An instant with its offset, in years the databases and the arithmetic on it (windows, holds) can take."""
    if value.tzinfo is None:
        raise ValueError("must include a timezone offset")
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise ValueError(f"must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()}")
    return value


def _date_time_text(value: Any) -> Any:
    """Only an RFC 3339 / ISO 8601 text reaches pydantic's parsing, which would also read a JSON number or a text
    of digits as Unix seconds (`"20261102"`, a compact date, would be a class starting in August 1970). A
    datetime (built in Python, not read from JSON) passes as it is."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("must be a date-time text with a UTC offset, e.g. 2026-11-02T18:00:00Z")
    return value


# an instant of the platform's events: a date-time text with its offset, in the years `_aware` takes
Instant = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(_aware)]


class StudentUpserted(_Data):
    student_id: Id
    email: str | None = Field(default=None, max_length=320)
    name: str | None = Field(default=None, max_length=200)
    timezone: str | None = Field(default=None, max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        return None if value is None else known_timezone(value)

    @field_validator("email")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        return None if value is None else mail_address(value)


class ClassUpserted(_Data):
    class_id: Id
    title: str | None = Field(default=None, max_length=200)
    starts_at: Instant
    ends_at: Instant | None = None
    # JSON numbers and booleans as JSON has them: "10" or true is refused, not read as 10 or 1
    capacity: StrictInt = Field(ge=0, le=INT32_MAX)
    seats_taken: StrictInt = Field(ge=0, le=INT32_MAX)
    status: Literal["scheduled", "cancelled"] = "scheduled"
    timezone: str | None = Field(default=None, max_length=64)

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        # as a student's: an unknown name would stand before the course's zone in every mail, and read as UTC
        return None if value is None else known_timezone(value)


class BookingCreated(_Data):
    booking_id: Id
    student_id: Id
    class_id: Id
    course_step_id: StrictInt | None = Field(default=None, ge=1, le=INT64_MAX)
    credit_type: Literal["group", "private"] | None = None


class BookingCancelled(_Data):
    booking_id: Id
    cancelled_at: Instant
    within_policy: StrictBool


class AttendanceMarked(_Data):
    booking_id: Id
    outcome: Literal["attended", "no_show"]
    marked_at: Instant


PLATFORM_DATA: dict[str, type[_Data]] = {
    "student.upserted": StudentUpserted,
    "class.upserted": ClassUpserted,
    "booking.created": BookingCreated,
    "booking.cancelled": BookingCancelled,
    "attendance.marked": AttendanceMarked,
}


class PlatformEnvelope(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: Id
    type: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    occurred_at: Instant
    data: dict[str, Any]


class InvalidEvent(ValueError):
    """Raised when an inbound body is not a valid event; `field` names the first bad field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownEventType(InvalidEvent):
    """Raised when a platform event's `type` is not one of PLATFORM_DATA (a typo must not pass as `ignored`);
    `envelope` is the valid envelope, for a caller that knows more handlers than this module."""

    def __init__(self, message: str, envelope: "PlatformEnvelope") -> None:
        super().__init__(message, "type")
        self.envelope = envelope


def _first_error(exc: ValidationError, prefix: str = "") -> InvalidEvent:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    name = f"{prefix}{loc}" if loc else prefix.rstrip(".") or None
    return InvalidEvent(f"{name}: {err.get('msg')}" if name else str(err.get("msg")), name)


def parse_platform_event(body: Any) -> tuple[PlatformEnvelope, _Data]:
    """Validate the envelope and its data; a type we do not handle raises UnknownEventType."""
    if not isinstance(body, dict):
        raise InvalidEvent("body must be a JSON object")
    try:
        envelope = PlatformEnvelope.model_validate(body)
    except ValidationError as exc:
        raise _first_error(exc) from None
    model = PLATFORM_DATA.get(envelope.type)
    if model is None:
        raise UnknownEventType(f"type: unknown platform event type {envelope.type!r}; known types: "
                               f"{', '.join(sorted(PLATFORM_DATA))}", envelope)
    try:
        return envelope, model.model_validate(envelope.data)
    except ValidationError as exc:
        raise _first_error(exc, "data.") from None


def platform_data(type_: str, data: dict[str, Any]) -> _Data:
    """Re-read a stored platform event's data (it was validated at the door)."""
    return PLATFORM_DATA[type_].model_validate(data)


def platform_subject(type_: str, data: dict[str, Any]) -> str | None:
    """The subject of a platform event: the id it is about, as its model reads it (surrounding spaces
    stripped), so the event takes the same lock as the others about that id."""
    field = {"student.upserted": ("student", "student_id"), "class.upserted": ("class", "class_id"),
             "booking.created": ("student", "student_id"), "booking.cancelled": ("booking", "booking_id"),
             "attendance.marked": ("booking", "booking_id")}.get(type_)
    if field is None:
        return None
    kind, name = field
    value = data.get(name)
    return f"{kind}:{value.strip() if isinstance(value, str) else value}"


def stripe_id(value: Any) -> Any:
    """A Stripe reference as an id: the id itself, or the id of the expanded object given in its place."""
    return value.get("id") if isinstance(value, dict) else value


def stripe_subject(type_: str, obj: dict[str, Any]) -> str | None:
    """Stripe events about one payment share a subject: the payment intent when known."""
    pi, charge = stripe_id(obj.get("payment_intent")), stripe_id(obj.get("charge"))
    if type_.startswith("checkout.session."):
        return f"payment:{pi or obj.get('id')}"
    if type_.startswith("charge.dispute."):
        return f"payment:{pi or charge}"
    if type_.startswith("charge.") or type_.startswith("refund."):
        return f"payment:{pi or charge or obj.get('id')}"
    if type_.startswith("product.") or type_.startswith("price."):
        return f"stripe:{obj.get('id')}"
    return None


# what `inbox_event` can hold (db.models.InboxEvent): a longer value would fail the insert
EVENT_ID_MAX, TYPE_MAX, SUBJECT_MAX = 255, 128, 128
LAST_UNIX_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds


def parse_stripe_event(body: Any) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """A verified Stripe event's envelope: (event, data.object, subject), or InvalidEvent naming the field.

    Only what the inbox stores is checked here (id, type, `created`, the subject); the object itself
    is checked by the handler that reads it (`tasks.purchases.shapes`), where a bad one fails visibly.
    """
    if not isinstance(body, dict):
        raise InvalidEvent("body must be a JSON object")
    data = body.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise InvalidEvent("data.object: not an object", "data.object")
    for field, longest in (("id", EVENT_ID_MAX), ("type", TYPE_MAX)):
        value = body.get(field)
        if not isinstance(value, str) or not value or len(value) > longest:
            raise InvalidEvent(f"{field}: a string of 1 to {longest} characters is required", field)
    created = body.get("created")
    if created is not None and (isinstance(created, bool) or not isinstance(created, int)
                                or not 0 <= created <= LAST_UNIX_TIME):
        raise InvalidEvent("created: not a Unix time", "created")
    if body["type"].startswith(("product.", "price.")):  # read by the drift check (tasks.catalog.drift)
        if not isinstance(obj.get("id"), str) or not obj["id"]:
            raise InvalidEvent("data.object.id: a string is required", "data.object.id")
        metadata = obj.get("metadata")
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, (str, type(None))) for v in metadata.values())):
            raise InvalidEvent("data.object.metadata: an object of strings is required", "data.object.metadata")
    subject = stripe_subject(body["type"], obj)
    if subject is not None and len(subject) > SUBJECT_MAX:
        raise InvalidEvent(f"data.object: the id it is about is longer than {SUBJECT_MAX - 8} characters",
                           "data.object")
    return body, obj, subject
