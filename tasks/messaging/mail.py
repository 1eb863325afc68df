"""Mail rendering: one Jinja2 file per mail under `tasks/messaging/templates/mail/`, the one place to edit wording.

Each `<name>.jinja` holds three blocks: `subject`, `text` (plain text) and `html` (the body, framed by
`_layout.html`). Contexts come from outbox rows written by other modules (`tasks.messaging.outbox.add_mail`),
possibly by older code, so a missing optional key renders as empty text, never as an error.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from email._policybase import Compat32
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from markupsafe import Markup

from tasks import currencies
from tasks.errors import PermanentError
from tasks.messaging.outbox import ADMIN_TEMPLATES

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates" / "mail"
# the mails to a student; the admins' alerts (to ADMINS) are named once, where the outbox knows them
STUDENT_TEMPLATES = ("enrollment_welcome", "booking_confirmed", "booking_cancelled", "class_cancelled", "step_reminder")
TEMPLATES = STUDENT_TEMPLATES + ADMIN_TEMPLATES
SIGNATURE = "coursepipe - course programs"


class UnknownTemplate(PermanentError):
    """Raised when an outbox row names a mail template that does not exist."""


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    text: str
    html: str


# --------------------------------------------------------------------------- filters


def _zone(name: str | None):
    if not name:
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def parse_when(value: Any) -> datetime | None:
    """An ISO 8601 instant (or a datetime), UTC when it names no offset; None when it is not one."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def local_time(value: Any, tz: str | None = None, style: str = "long") -> str:
    """An ISO instant shown in the reader's timezone: 'Tuesday 1 December 2026, 18:00 CET (Europe/Berlin)'."""
    moment = parse_when(value)
    if moment is None:
        return "" if value is None or isinstance(value, jinja2.Undefined) else str(value)
    zone = _zone(tz if isinstance(tz, str) else None)
    local = moment.astimezone(zone)
    abbreviation = local.tzname() or ""
    if style == "short":
        return f"{local:%a} {local.day} {local:%b} {local:%H:%M} {abbreviation}".strip()
    zone_name = getattr(zone, "key", "UTC")
    suffix = f" ({zone_name})" if zone_name != abbreviation else ""
    return f"{local:%A} {local.day} {local:%B %Y}, {local:%H:%M} {abbreviation}{suffix}".strip()


def money(amount: Any, currency: Any = None) -> str:
    """Minor units in the currency's own decimals: '1,234.50 EUR', '1200 JPY', '12.500 KWD'."""
    if amount is None or isinstance(amount, jinja2.Undefined):
        return "-"
    code = (currency if isinstance(currency, str) else "").upper()
    try:
        minor = int(amount)
    except (TypeError, ValueError):
        return str(amount)
    # whole yen are written as they are charged; a currency with decimals groups its thousands
    return f"{currencies.major(minor, code, grouped=currencies.exponent(code) > 0)} {code}".strip()


def credit_kind(kind: Any, quantity: Any = 1) -> str:
    words = {"private_credit": "private lesson credit", "group_credit": "group class credit",
             "private": "private lesson credit", "group": "group class credit"}
    word = words.get(str(kind), str(kind).replace("_", " "))
    try:
        plural = int(quantity) != 1
    except (TypeError, ValueError):
        plural = False
    return word + ("s" if plural else "")


# --------------------------------------------------------------------------- environments


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=autoescape,
        undefined=jinja2.ChainableUndefined,  # tolerant: a missing key (or a key of one) renders empty
        trim_blocks=False,
        keep_trailing_newline=False,
    )
    env.filters.update(local_time=local_time, money=money, credit_kind=credit_kind)
    return env


@lru_cache(maxsize=1)
def _environments() -> tuple[jinja2.Environment, jinja2.Environment]:
    # the same files twice: plain text unescaped, the HTML block autoescaped
    return _environment(False), _environment(True)


def _block(env: jinja2.Environment, name: str, block: str, context: dict[str, Any]) -> str:
    template = env.get_template(f"{name}.jinja")
    render = template.blocks.get(block)
    if render is None:
        return ""
    return "".join(render(template.new_context(context)))


def render(template: str, context: dict[str, Any] | None) -> RenderedMail:
    """Render one mail. Raises UnknownTemplate (permanent) for a name with no file."""
    if template not in TEMPLATES:
        raise UnknownTemplate(f"no mail template {template!r}")
    context = dict(context or {})
    text_env, html_env = _environments()
    subject = re.sub(r"\s+", " ", _block(text_env, template, "subject", context)).strip()
    text = _block(text_env, template, "text", context).strip() + f"\n\n-- \n{SIGNATURE}\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    body = Markup(_block(html_env, template, "html", context).strip())
    html = html_env.get_template("_layout.html").render(subject=subject, body=body, signature=SIGNATURE)
    return RenderedMail(subject=subject, text=text, html=html)


# UTF-8 parts and encoded words as quoted-printable: readable where the text is ASCII
_UTF8 = Charset("utf-8")
_UTF8.header_encoding = _UTF8.body_encoding = QP


class _Policy(Compat32):
    """compat32, as the MIME classes write, but a printable ASCII header whose line fits is written as it stands:
    the same bytes compat32 writes for it, without a `Header` built to fold it (a third of a mail's CPU)."""

    def _fold(self, name, value, sanitize):
        # printable ASCII only: compat32 splits a value at any line boundary str.splitlines knows (\x0b, \x1c …)
        if (isinstance(value, str) and value.isascii() and value.isprintable()
                and len(name) + 2 + len(value) <= (self.max_line_length or 78)):
            return f"{name}: {value}{self.linesep}"
        return super()._fold(name, value, sanitize)


_POLICY = _Policy()


def _boundary() -> str:
    """A random boundary, as the email package makes one; chosen here, the generator does not compile a
    regular expression per mail to look for it in the parts (a random 128-bit token is not in them)."""
    return f"==============={secrets.token_hex(16)}=="


@lru_cache(maxsize=8)
def sender_parts(sender: str) -> tuple[str, str]:
    """MAIL_FROM as (display name, bare address): the same for every mail, parsed once."""
    return parseaddr(sender)


def build_message(
    mail: RenderedMail, *, sender: str, recipients: list[str] | tuple[str, ...], message_id: str
) -> Message:
    """A multipart/alternative message (plain text first) carrying our stable Message-ID.

    Built with the email package's MIME classes, which take headers as given: the `EmailMessage` API
    parses every header it is given and again when the message is written, four times the CPU of a
    relay's mail (2.0 against 0.5 ms). A header that is not ASCII is written as RFC 2047 encoded words.
    """
    name, address = sender_parts(sender)
    if not all(a.isascii() for a in (address, *recipients)):
        return _international_message(mail, sender=sender, recipients=recipients, message_id=message_id)
    message = MIMEMultipart("alternative", boundary=_boundary(), policy=_POLICY)
    message["Subject"] = _header(mail.subject, "Subject")
    message["From"] = formataddr((name, address), charset=_UTF8) if address else _header(sender, "From")
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    message.attach(MIMEText(mail.text, "plain", _UTF8, policy=_POLICY))
    message.attach(MIMEText(mail.html, "html", _UTF8, policy=_POLICY))
    return message


def _header(value: str, name: str) -> str | Header:
    return value if value.isascii() else Header(value, _UTF8, header_name=name)


def _international_message(mail: RenderedMail, *, sender: str, recipients: list[str] | tuple[str, ...],
                           message_id: str) -> EmailMessage:
    """A mail to or from an address beyond ASCII: the `EmailMessage` API, which smtplib sends with SMTPUTF8
    (the MIME classes cannot write such an address in a header)."""
    message = EmailMessage()
    message["Subject"] = mail.subject
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message
