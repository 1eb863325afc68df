"""The outbox relay: intent → call → outcome, each step in its own unit of work.

1. `claim` (one short transaction): lock a due `pending` row (SKIP LOCKED on PostgreSQL), move it to
   `sending` through `tasks.machines.OUTBOX`, count the attempt and take a lease; return a `Job` of
   plain values.
2. `transmit` (no transaction, no session): SMTP for mail, a signed POST for platform events. A relay's
   batch goes through one `Sender`, which keeps its SMTP session and its HTTP connection open from one
   message to the next.
3. `record` (one short transaction; `record_all` for a batch): `sent`; or back to `pending` with
   exponential backoff; or `dead` after `MAX_ATTEMPTS` — enough attempts to keep trying for `RETRY_FOR`
   (3 days) — or at once for a permanent failure. Dead rows are the admins' to retry, one by one or all
   at once. A mail held up past its context's `expires_at` ends `expired`: not sent, and not a failure
   (never listed, counted or retried as dead).

The `sending` lease is short (`SENDING_LEASE`): a relay renews it before each message of its batch
(`renew_lease`), so a message held by a sender that died is due again within a minute.

Idempotency for the receiver: a platform event carries `cp_out_<public id>` as its event id and a
mail carries `Message-ID: <<public id>@coursepipe>`, the same on every attempt, so a message sent
twice (a worker killed between the call and the outcome) can be deduplicated on the other side. The
public id is random (made at insert), so two installations (production, staging, a restore) never
send the same id.

A channel that is not configured (no `SMTP_URL`, no `PLATFORM_CALLBACK_URL`, no admin addresses
for `@admins`) is never claimed: its rows stay `pending` and are delivered once it is configured.
"""
from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import and_, exists, func, or_, select, tuple_, union_all, update
from sqlalchemy.orm import Session, aliased

from db.enums import OutboxChannel, OutboxStatus
from db.models import OutboxMessage
from db.types import utcnow
from tasks import signatures
from tasks.messaging import mail
from tasks.errors import NotFound, TaskError
from tasks.inbox.store import is_pruned, not_pruned
from tasks.machines import OUTBOX
from tasks.messaging.outbox import ADMINS

log = logging.getLogger("coursepipe.delivery")

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
RETRY_FOR = timedelta(days=3)  # a receiver down for less than this gets every message when it returns
NETWORK_TIMEOUT_SECONDS = 15
# a `sending` row whose lease ran out is presumed abandoned; one send (≤ NETWORK_TIMEOUT_SECONDS) fits in
# it, and the relay renews it before each message, so a dead sender's row is retried within a minute
SENDING_LEASE = timedelta(seconds=40)
RENEW_AFTER_SECONDS = 10  # a relay renews the next message's lease once its batch is this old
RECORD_AFTER_SECONDS = 1  # ... and records what it sent before each further message once it is this old
RELAY_BATCH = 500
CLAIM_BATCH = 10  # messages a relay claims at first, and again after a failure
CLAIM_BATCH_MAX = 50  # ... and at most, where its receivers answer fast
EVENT_ID_PREFIX = "cp_out_"
HELD_LOG_EVERY_SECONDS = 300
PROBE_TIMEOUT = 5  # seconds a kept SMTP session has to answer a NOOP before it is replaced


@dataclass(frozen=True)
class Job:
    """A claimed message, as plain values usable outside any transaction."""

    id: int
    channel: OutboxChannel
    topic: str
    recipients: tuple[str, ...]
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    public_id: str = ""
    sequence: int | None = None
    enrollment_id: int | None = None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None
    permanent: bool = False
    expired: bool = False  # not sent because it was no longer worth sending (final, and not a failure)


def event_id(public_id: str) -> str:
    return f"{EVENT_ID_PREFIX}{public_id}"


def mail_message_id(public_id: str) -> str:
    return f"<{public_id}@coursepipe>"


def backoff(attempts: int, *, base: timedelta = BACKOFF_BASE, cap: timedelta = BACKOFF_CAP) -> timedelta:
    """30 s, 1 min, 2 min, 4 min … capped at an hour, after the n-th failed attempt."""
    return min(base * (2 ** min(max(attempts - 1, 0), 30)), cap)


def attempts_to_cover(window: timedelta) -> int:
    """How many attempts it takes for the last one to come at least `window` after the first."""
    attempts, waited = 1, timedelta(0)
    while waited < window:
        waited += backoff(attempts)
        attempts += 1
    return attempts


MAX_ATTEMPTS = attempts_to_cover(RETRY_FOR)  # 79: seven within the first hour, then hourly


# --------------------------------------------------------------------------- readiness


def _held_reason(settings, channel: OutboxChannel, recipient: str | None) -> str | None:
    """Why a message of this channel cannot leave now (None: it can)."""
    if channel is OutboxChannel.MAIL:
        if not settings.smtp_url:
            return "SMTP_URL is not set"
        if recipient == ADMINS and not settings.admin_alert_emails:
            return "ADMIN_ALERT_EMAILS is empty"
        return None
    if not settings.platform_callback_url:
        return "PLATFORM_CALLBACK_URL is not set"
    if not settings.platform_webhook_secret:
        return "PLATFORM_WEBHOOK_SECRET is not set"
    return None


_last_held_log: dict[str, float] = {}  # when each reason was last logged, and the held rows last looked up
_HELD_LOOKUP = "(held rows looked up)"


def _once_per_window(key: str) -> bool:
    """True at most once per HELD_LOG_EVERY_SECONDS for `key` in this process (and then the window starts)."""
    now = time.monotonic()
    if now - _last_held_log.get(key, -HELD_LOG_EVERY_SECONDS) >= HELD_LOG_EVERY_SECONDS:
        _last_held_log[key] = now
        return True
    return False


def _log_held(reason: str, count: int) -> None:
    if _once_per_window(reason):
        log.warning("%d outbox message(s) held in the outbox: %s", count, reason)


def _recipients(settings, recipient: str | None) -> tuple[str, ...]:
    if recipient == ADMINS:
        return tuple(settings.admin_alert_emails)
    # a stored address is one recipient, never a list: "a@x,b@y" or "N <b@y>" must not reach b@y
    return (recipient,) if recipient else ()


# --------------------------------------------------------------------------- 1. claim


def release_stuck(*, session: Session, now: datetime | None = None) -> int:
    """`sending` rows whose lease ran out (their worker died mid-call) go back to `pending`: one statement."""
    now = now or utcnow()
    stuck = _locked(session, select(OutboxMessage.id).where(
        OutboxMessage.status == OutboxStatus.SENDING, OutboxMessage.next_attempt_at <= now)).cte("stuck")
    released = session.execute(
        update(OutboxMessage).where(OutboxMessage.id.in_(select(stuck.c.id)))
        .values(status=OutboxStatus.PENDING, next_attempt_at=now,
                last_error="sending lease expired (worker lost mid-send); will retry")
        .returning(OutboxMessage.id, OutboxMessage.enrollment_id)
        .execution_options(synchronize_session=False)).all()
    OUTBOX.log_moves(session, [(row.id, OutboxStatus.SENDING, OutboxStatus.PENDING, "sending lease expired",
                                row.enrollment_id) for row in released], at=now)
    if released:
        log.warning("released %d outbox message(s) stuck in sending", len(released))
    return len(released)


def _locked(session: Session, query, *, skip_locked: bool = True):
    """`query` with its rows locked on PostgreSQL (SKIP LOCKED: another worker's rows are left to it)."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=skip_locked)
    return query


def _ready_filter(settings):
    """SQL condition for rows whose channel can leave now (held ones are left untouched)."""
    from sqlalchemy import and_, false

    conditions = []
    if _held_reason(settings, OutboxChannel.MAIL, None) is None:
        mail_ok = OutboxMessage.channel == OutboxChannel.MAIL
        if not settings.admin_alert_emails:
            mail_ok = and_(mail_ok, or_(OutboxMessage.recipient.is_(None), OutboxMessage.recipient != ADMINS))
        conditions.append(mail_ok)
    if _held_reason(settings, OutboxChannel.PLATFORM, None) is None:
        conditions.append(OutboxMessage.channel == OutboxChannel.PLATFORM)
    return or_(*conditions) if conditions else false()


UNSENT = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.DEAD)


def _in_turn():
    """SQL condition: a platform event whose enrollment has an earlier event not sent yet (pending, being sent,
    or dead) waits its turn. The platform applies an enrollment's events in `sequence` order and drops one
    older than the last it applied, so an event overtaken by a later one (a failed send retried after it, two
    relays at once) would be lost to it. One event per enrollment is in flight at a time; a dead one holds the
    rest back until it is retried."""
    earlier, later = aliased(OutboxMessage), aliased(OutboxMessage)
    # a dead event a later one was already delivered past (before this rule, or by hand) holds nothing back:
    # the platform has applied that later one and drops the dead one whenever it comes
    overtaken = exists().where(later.enrollment_id == earlier.enrollment_id, later.sequence > earlier.sequence,
                               later.status == OutboxStatus.SENT)
    return or_(OutboxMessage.sequence.is_(None), ~exists().where(
        earlier.enrollment_id == OutboxMessage.enrollment_id, earlier.sequence < OutboxMessage.sequence,
        earlier.status.in_(UNSENT), ~(and_(earlier.status == OutboxStatus.DEAD, overtaken))))


def next_in_turn(*, session: Session, enrollment_ids: set[int]) -> bool:
    """Whether any of these enrollments has a platform event still to send (its turn may have come)."""
    if not enrollment_ids:
        return False
    return session.scalar(select(OutboxMessage.id).where(
        OutboxMessage.enrollment_id.in_(sorted(enrollment_ids)), OutboxMessage.channel == OutboxChannel.PLATFORM,
        OutboxMessage.status == OutboxStatus.PENDING).limit(1)) is not None


def _log_held_rows(session: Session, settings, now: datetime) -> None:
    """Count and log the due rows a missing setting holds back. Looked up only where a row can be held, and at
    most once per HELD_LOG_EVERY_SECONDS, as often as the warning is logged: with none held, the look-up reads
    every due row, and a relay claims many times a second."""
    if not _held_possible(settings) or not _once_per_window(_HELD_LOOKUP):
        return
    held = session.execute(
        select(OutboxMessage.channel, OutboxMessage.recipient)
        .where(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.next_attempt_at <= now,
               ~_ready_filter(settings))
        .limit(RELAY_BATCH)
    ).all()
    reasons: dict[str, int] = {}
    for channel, recipient in held:
        reason = _held_reason(settings, channel, recipient) or "held"
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        _log_held(reason, count)


def due_ids(*, session: Session, settings, now: datetime | None = None, limit: int = RELAY_BATCH) -> list[int]:
    """Ids of the `pending` rows a claim of `limit` would take now (platform events first), unlocked; held
    ones are counted and logged."""
    now = now or utcnow()
    _log_held_rows(session, settings, now)
    shares = [select(share.c.id) for share in _due_shares(session, settings, now, limit, locked=False)]
    if not shares:
        return []
    return list(session.scalars(union_all(*shares) if len(shares) > 1 else shares[0]))


def prepare_relay(*, session: Session, settings, now: datetime | None = None, limit: int = RELAY_BATCH) -> list[int]:
    """Free abandoned `sending` rows, then list what is due (for inspection and tests)."""
    now = now or utcnow()
    release_stuck(session=session, now=now)
    return due_ids(session=session, settings=settings, now=now, limit=limit)


# what a claim reads back of each row it takes
_JOB_COLUMNS = (OutboxMessage.id, OutboxMessage.channel, OutboxMessage.topic, OutboxMessage.recipient,
                OutboxMessage.payload, OutboxMessage.created_at, OutboxMessage.attempts, OutboxMessage.public_id,
                OutboxMessage.sequence, OutboxMessage.enrollment_id)


def _take(session: Session, due, settings, now: datetime, lease: timedelta) -> list[Job]:
    """Move the `pending` rows whose ids `due` selects or lists (locked) to `sending`, count the attempt and
    take the lease: one UPDATE, the transition lines in one INSERT. The jobs come platform events first (a
    callback is quick; a mail may wait on a slow server), each channel's in id order (the order written)."""
    rows = sorted(session.execute(
        update(OutboxMessage).where(OutboxMessage.id.in_(due), OutboxMessage.status == OutboxStatus.PENDING)
        .values(status=OutboxStatus.SENDING, attempts=OutboxMessage.attempts + 1, next_attempt_at=now + lease)
        .returning(*_JOB_COLUMNS)
        .execution_options(synchronize_session=False)).all(),
        key=lambda row: (row.channel is not OutboxChannel.PLATFORM, row.id))
    OUTBOX.log_moves(session, [(row.id, OutboxStatus.PENDING, OutboxStatus.SENDING, f"attempt {row.attempts}",
                                row.enrollment_id) for row in rows], at=now)
    return [Job(id=row.id, channel=row.channel, topic=row.topic,
                recipients=_recipients(settings, row.recipient) if row.channel is OutboxChannel.MAIL else (),
                payload=dict(row.payload or {}), created_at=row.created_at, attempts=row.attempts,
                public_id=row.public_id, sequence=row.sequence, enrollment_id=row.enrollment_id) for row in rows]


def next_batch(size: int, *, claimed: int, delivered: int, seconds: float) -> int:
    """How many messages the relay that follows a full batch claims: twice as many while the batch went
    out whole within RECORD_AFTER_SECONDS, up to CLAIM_BATCH_MAX (each claim and record costs a few
    statements, whatever its size); CLAIM_BATCH again after any failure or a slow batch. A receiver that
    turns slow in the middle of a big batch gets the rest of it back in small ones (`hand_back`)."""
    if delivered < claimed or seconds > RECORD_AFTER_SECONDS:
        return CLAIM_BATCH
    return batch_size(2 * size)


def batch_size(asked: int | None) -> int:
    """A relay's claim size: `asked` held to CLAIM_BATCH…CLAIM_BATCH_MAX (CLAIM_BATCH when not given)."""
    return max(CLAIM_BATCH, min(CLAIM_BATCH_MAX, asked or CLAIM_BATCH))


def hand_back(*, session: Session, jobs: list[Job], now: datetime | None = None) -> int:
    """Claimed messages not sent yet go back to `pending`, due now, the attempt their claim counted taken back:
    a batch that turned slow keeps what it sends next and leaves the rest to other relays, before the rest's
    leases run out. A row whose lease another relay has taken over is left alone. Returns how many went back."""
    if not jobs:
        return 0
    now = now or utcnow()
    handed = session.execute(
        update(OutboxMessage)
        .where(tuple_(OutboxMessage.id, OutboxMessage.attempts).in_([(job.id, job.attempts) for job in jobs]),
               OutboxMessage.status == OutboxStatus.SENDING)
        .values(status=OutboxStatus.PENDING, attempts=OutboxMessage.attempts - 1, next_attempt_at=now)
        .returning(OutboxMessage.id, OutboxMessage.enrollment_id)
        .execution_options(synchronize_session=False)).all()
    OUTBOX.log_moves(session, [(row.id, OutboxStatus.SENDING, OutboxStatus.PENDING, "handed back unsent: slow batch",
                                row.enrollment_id) for row in handed], at=now)
    return len(handed)


def _held_possible(settings) -> bool:
    """Whether any row could be held back by this configuration (a channel or the admins' addresses unset)."""
    return any(_held_reason(settings, channel, recipient) is not None
               for channel, recipient in ((OutboxChannel.MAIL, ADMINS), (OutboxChannel.PLATFORM, None)))


def claim_due(
    *, session: Session, settings, now: datetime | None = None, limit: int = CLAIM_BATCH,
    lease: timedelta = SENDING_LEASE, channel: OutboxChannel | None = None,
) -> list[Job]:
    """The relay's unit of work: free abandoned `sending` rows, then take up to `limit` due rows of each channel
    (of `channel` alone, if given).

    Rows another relay has locked are skipped (SKIP LOCKED on PostgreSQL), so concurrent relays
    share the backlog; rows of a channel that is not configured are left alone (and logged).
    """
    now = now or utcnow()
    release_stuck(session=session, now=now)
    _log_held_rows(session, settings, now)
    shares = [select(share.c.id) for share in _due_shares(session, settings, now, limit, channel)]
    if not shares:
        return []
    return _take(session, union_all(*shares) if len(shares) > 1 else shares[0], settings, now, lease)


def _due_shares(session: Session, settings, now: datetime, limit: int, only: OutboxChannel | None = None, *,
                locked: bool = True) -> list:
    """Each configured channel's due rows, up to `limit` of each, oldest first (locked, unless told not to): a
    CTE per channel, so a backlog of mail (a slow mail server, a reminder run) does not hold the platform's
    events back. The platform's are found through their own partial index, not by reading past every due mail.
    Platform events come first."""
    shares = []
    for channel in (OutboxChannel.PLATFORM, OutboxChannel.MAIL):
        if (only is not None and channel is not only) or _held_reason(settings, channel, None) is not None:
            continue
        query = (select(OutboxMessage.id)
                 .where(OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.channel == channel,
                        OutboxMessage.next_attempt_at <= now, _ready_filter(settings))
                 .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id).limit(limit))
        if channel is OutboxChannel.PLATFORM:
            query = query.where(_in_turn())
        shares.append((_locked(session, query) if locked else query).cte(f"due_{channel.value}"))
    return shares


def claim(
    *, session: Session, message_id: int, settings, now: datetime | None = None, lease: timedelta = SENDING_LEASE
) -> Job | None:
    """Take one due message for sending; None if it is not due, not ours, or its channel is held."""
    now = now or utcnow()
    message = session.execute(_locked(session, select(
        OutboxMessage.status, OutboxMessage.next_attempt_at, OutboxMessage.channel, OutboxMessage.recipient,
        _in_turn().label("in_turn"))
        .where(OutboxMessage.id == message_id))).first()  # another worker has it: leave it to them
    if message is None or message.status is not OutboxStatus.PENDING or message.next_attempt_at > now:
        return None
    if not message.in_turn:
        return None  # an earlier event of its enrollment goes first; a relay takes this one after it
    reason = _held_reason(settings, message.channel, message.recipient)
    if reason:
        _log_held(reason, 1)
        return None
    jobs = _take(session, [message_id], settings, now, lease)  # the row is locked above
    return jobs[0] if jobs else None


def renew_lease(*, session: Session, job: Job, now: datetime | None = None, lease: timedelta = SENDING_LEASE) -> bool:
    """Extend the lease of a claimed message just before it is sent. False: the lease ran out and the
    row went back to the queue (another relay may have it now), so this sender must leave it alone."""
    now = now or utcnow()
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == job.id, OutboxMessage.status == OutboxStatus.SENDING,
               OutboxMessage.attempts == job.attempts)
        .values(next_attempt_at=now + lease)
        .execution_options(synchronize_session=False))
    return result.rowcount == 1


# --------------------------------------------------------------------------- 2. transmit (network)


def transmit(job: Job, *, settings, timeout: float = NETWORK_TIMEOUT_SECONDS, now: datetime | None = None) -> Outcome:
    """Send one claimed message on connections of its own. Never raises: every failure becomes an Outcome."""
    with Sender(settings, timeout=timeout) as sender:
        return sender.send(job, now=now)


class Sender:
    """Sends claimed messages one after the other, keeping the SMTP session and the platform's HTTP
    connection open between them (a relay's batch), and closes both at the end.

    A kept connection is checked before it is used again (SMTP: a NOOP; HTTP: the pool's check that the
    socket is still open) and replaced when the far side has closed it, so a message is never sent twice
    by this class. An SMTP error, or a connection that failed, is dropped: the next message starts on a
    fresh one. `timeout` bounds each network operation (connect, each command and reply), as before.
    """

    def __init__(self, settings, *, timeout: float = NETWORK_TIMEOUT_SECONDS) -> None:
        self.settings, self.timeout = settings, timeout
        self._smtp: smtplib.SMTP | None = None
        self._http = None  # a requests.Session, made on the first platform event

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._drop_smtp()
        if self._http is not None:
            self._http.close()
            self._http = None

    def send(self, job: Job, *, now: datetime | None = None) -> Outcome:
        """Never raises: every failure becomes an Outcome. `now`: the time a mail's expiry is judged at."""
        try:
            if job.channel is OutboxChannel.MAIL:
                return self._send_mail(job, now or utcnow())
            return self._post_platform_event(job)
        except TaskError as exc:  # a permanent domain error (unknown template…)
            return Outcome(False, f"{type(exc).__name__}: {exc}", permanent=True)
        except Exception as exc:  # anything unexpected is retried
            self.close()
            return Outcome(False, f"{type(exc).__name__}: {exc}")

    # -- platform events: a signed POST on a kept-alive connection

    def _post_platform_event(self, job: Job) -> Outcome:
        import requests

        if self._http is None:
            self._http = _http_session(self.settings.platform_callback_url)
        body = platform_body(job)
        headers = {
            "Content-Type": "application/json",
            "Platform-Signature": signatures.sign(body, self.settings.platform_webhook_secret),
            "Platform-Event-Id": event_id(job.public_id),
            **signatures.standard_headers(body, message_id=event_id(job.public_id),
                                          secret=self.settings.platform_webhook_secret),
            "User-Agent": "coursepipe-outbox/1",
        }
        try:
            # a redirect is not followed: the event would arrive elsewhere, or as a GET without its body
            response = self._http.post(self.settings.platform_callback_url, data=body, headers=headers,
                                       timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            self._http.close()
            self._http = None
            return Outcome(False, f"platform unreachable: {_reason(exc)}")
        if 200 <= response.status_code < 300:
            return Outcome(True)
        # every other answer is retried for RETRY_FOR, a 4xx too: a receiver refusing for a while (its secret
        # being rotated, a deploy answering 404) gets the event once it is fixed, and no one has to retry it
        return Outcome(False, f"platform answered HTTP {response.status_code}")

    # -- mail: one SMTP session for the batch

    def _send_mail(self, job: Job, now: datetime) -> Outcome:
        if not job.recipients:
            return Outcome(False, "mail has no recipient", permanent=True)
        if is_pruned(job.payload):  # retried after retention pruned its body (an alert keeps its @admins)
            return Outcome(False, "its body was pruned by retention: nothing to send", permanent=True)
        expires = mail.parse_when((job.payload.get("context") or {}).get("expires_at"))
        if expires is not None and expires <= now:  # e.g. a step reminder once its class has started
            return Outcome(False, f"expired at {expires.isoformat()}: no longer worth sending", expired=True)
        template = job.payload.get("template") or job.topic
        rendered = mail.render(template, job.payload.get("context") or {})
        message = mail.build_message(rendered, sender=self.settings.mail_from, recipients=job.recipients,
                                     message_id=mail_message_id(job.public_id))
        try:
            session = self._session()
        except smtplib.SMTPResponseException as exc:
            # the session refused (greeting, TLS, login): the server's word on our set-up, not on this mail, which
            # goes out once the set-up is fixed (an SMTP password being rotated must not kill every mail it meets)
            self._drop_smtp()
            return Outcome(False, f"SMTP {exc.smtp_code} opening the session: {exc.smtp_error!r}")
        except (smtplib.SMTPException, OSError) as exc:
            self._drop_smtp()
            return Outcome(False, f"SMTP unreachable: {type(exc).__name__}: {exc}")
        try:
            # the envelope carries the bare address; the From header carries the name
            refused = session.send_message(message, from_addr=mail.sender_parts(self.settings.mail_from)[1]
                                           or self.settings.mail_from, to_addrs=list(job.recipients))
        except smtplib.SMTPRecipientsRefused as exc:  # its text names the addresses: only the codes are kept
            self._drop_smtp()
            # final only when every refusal is: a 4xx (greylisting, a mailbox unavailable for now) is tried again
            final = all(_permanent(code) for code, _ in exc.recipients.values())
            return Outcome(False, f"all recipients refused: SMTP {_codes(exc.recipients)}", permanent=final)
        except smtplib.SMTPResponseException as exc:
            self._drop_smtp()
            # 5xx is the server's final word; 4xx (greylisting, full mailbox) is worth another try
            return Outcome(False, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", permanent=_permanent(exc.smtp_code))
        except (smtplib.SMTPException, OSError) as exc:
            self._drop_smtp()
            return Outcome(False, f"SMTP unreachable: {type(exc).__name__}: {exc}")
        if refused:
            log.warning("outbox %s: %d recipient(s) refused: SMTP %s", job.id, len(refused), _codes(refused))
        return Outcome(True)

    def _session(self) -> smtplib.SMTP:
        """The kept session if the server still answers it (servers close idle ones), else a new one."""
        if self._smtp is not None and not self._answers(self._smtp):
            self._drop_smtp()
        if self._smtp is None:
            self._smtp = _smtp_session(parse_smtp_url(self.settings.smtp_url), self.timeout)
        return self._smtp

    def _answers(self, client: smtplib.SMTP) -> bool:
        try:
            client.sock.settimeout(min(self.timeout, PROBE_TIMEOUT))
            code, _ = client.noop()
            client.sock.settimeout(self.timeout)
        except (smtplib.SMTPException, OSError, AttributeError):  # AttributeError: smtplib closed the socket
            return False
        return code == 250

    def _drop_smtp(self) -> None:
        client, self._smtp = self._smtp, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


def _http_session(url: str):
    """A requests session for `url` that reads the environment's proxy and CA settings once, as requests
    would on every request (HTTPS_PROXY / NO_PROXY, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE): scanning the
    environment was a third of a callback's CPU."""
    import requests

    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies(url)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False  # the environment was read above
    return session


def _permanent(smtp_code: int) -> bool:
    """An SMTP reply that is the server's final word on a mail (5xx); 4xx asks for another try later."""
    return 500 <= smtp_code < 600


def _reason(exc: Exception) -> str:
    """What a connection failure says, without the request repeated around it."""
    inner = exc.args[0] if exc.args else exc
    reason = getattr(inner, "reason", None)
    return str(reason or inner)


def _smtp_session(target: "SmtpTarget", timeout: float) -> smtplib.SMTP:
    """A connected SMTP session: TLS as `target` asks, logged in when it has a user."""
    if target.mode == "ssl":
        client = smtplib.SMTP_SSL(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(target.host, target.port, timeout=timeout)
    try:
        if target.mode == "starttls":
            client.starttls(context=ssl.create_default_context())
        if target.username:
            client.login(target.username, target.password or "")
    except BaseException:
        client.close()
        raise
    return client


def outbound_event(*, public_id: str, topic: str, payload: dict[str, Any], created_at: datetime,
                   sequence: int | None) -> dict[str, Any]:
    """The outbound event envelope, pushed and served by `GET /v1/events` alike; stable across attempts.
    `occurred_at` repeats `created_at` (the inbound envelope's name for it)."""
    return {
        "id": event_id(public_id),
        "type": payload.get("type") or topic,
        "created_at": created_at.isoformat(),
        "occurred_at": created_at.isoformat(),
        "sequence": sequence,
        "data": payload.get("data") or {},
    }


def platform_body(job: Job) -> bytes:
    envelope = outbound_event(public_id=job.public_id, topic=job.topic, payload=job.payload,
                              created_at=job.created_at, sequence=job.sequence)
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    mode: str  # plain | starttls | ssl
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    """smtp://host:port (plain), smtp://…?starttls=true or smtp+starttls://…, smtps://… (TLS); user:pass@ optional."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    if scheme == "smtps":
        mode, default_port = "ssl", 465
    elif scheme == "smtp+starttls" or query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes"):
        mode, default_port = "starttls", 587
    elif scheme == "smtp":
        mode, default_port = "plain", 25
    else:
        raise ValueError(f"SMTP_URL scheme must be smtp, smtp+starttls or smtps, not {parts.scheme!r}")
    return SmtpTarget(
        host=parts.hostname or "localhost",
        port=parts.port or default_port,
        mode=mode,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


def _codes(refused: dict) -> str:
    """The SMTP codes of refused recipients ({address: (code, text)}), without the addresses."""
    return ", ".join(sorted({str(answer[0]) for answer in refused.values()}))


# --------------------------------------------------------------------------- 3. record


def record(
    *,
    session: Session,
    job: Job,
    outcome: Outcome,
    now: datetime | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> OutboxStatus | None:
    """Write the outcome of one attempt. Returns the row's new status (None if the row is gone)."""
    return record_all(session=session, results=[(job, outcome)], now=now, max_attempts=max_attempts)[0]


def record_all(
    *,
    session: Session,
    results: list[tuple[Job, Outcome]],
    now: datetime | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> list[OutboxStatus | None]:
    """Write the outcomes of a relay's batch in one unit of work: its rows read (and locked) by one statement,
    in id order; the delivered ones marked `sent` by one UPDATE (a failure is an UPDATE of its own), every
    move's line in one INSERT. Returns each row's new status, in the order given (None if the row is gone)."""
    if not results:
        return []
    now = now or utcnow()
    rows = {row.id: _Current(row.status, row.attempts, row.enrollment_id, row.channel, row.topic)
            for row in session.execute(_locked(session, select(
                OutboxMessage.id, OutboxMessage.status, OutboxMessage.attempts, OutboxMessage.enrollment_id,
                OutboxMessage.channel, OutboxMessage.topic)
                .where(OutboxMessage.id.in_([job.id for job, _ in results])).order_by(OutboxMessage.id),
                skip_locked=False))}
    writes = _Writes()
    statuses = [_record(rows.get(job.id), job, outcome, now, max_attempts, writes) for job, outcome in results]
    OUTBOX.log_moves(session, writes.moves, at=now)
    if writes.sent:
        session.execute(update(OutboxMessage).where(OutboxMessage.id.in_(writes.sent))
                        .values(status=OutboxStatus.SENT, sent_at=now, last_error=None)
                        .execution_options(synchronize_session=False))
    for message_id, values in writes.failed.items():
        session.execute(update(OutboxMessage).where(OutboxMessage.id == message_id).values(**values)
                        .execution_options(synchronize_session=False))
    return statuses


@dataclass
class _Current:
    """A row's state as `record_all` read it, kept up to date as its outcomes are decided."""

    status: OutboxStatus
    attempts: int
    enrollment_id: int | None
    channel: OutboxChannel
    topic: str


@dataclass
class _Writes:
    moves: list = field(default_factory=list)  # (id, from, to, cause, enrollment id): OUTBOX.log_moves
    sent: list[int] = field(default_factory=list)
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)  # a row's values after a failed attempt


def _record(row: _Current | None, job: Job, outcome: Outcome, now: datetime, max_attempts: int,
            writes: _Writes) -> OutboxStatus | None:
    if row is None:
        return None
    if outcome.ok:
        # it left: record it even if our lease ran out meanwhile (a re-send would carry the same id)
        if row.status in (OutboxStatus.DEAD, OutboxStatus.EXPIRED):
            # our lease ran out and a later attempt gave up; ours got through after all
            log.warning("outbox %s was delivered by a late attempt after it was marked %s", job.id, row.status.value)
        if row.status is not OutboxStatus.SENT:
            writes.moves.append((job.id, row.status, OutboxStatus.SENT, f"attempt {job.attempts}", row.enrollment_id))
            writes.sent.append(job.id)
            writes.failed.pop(job.id, None)  # a failure of the same row given before: this outcome is the last
            row.status = OutboxStatus.SENT
        return row.status
    if row.status is not OutboxStatus.SENDING or row.attempts != job.attempts:
        return row.status  # the lease expired and another attempt owns the row now
    values: dict[str, Any] = {"last_error": outcome.error}
    if outcome.expired:  # not a failure: nothing for an admin to do, nothing to retry
        target, cause = OutboxStatus.EXPIRED, "expired"
        log.info("outbox %s (%s %s) expired unsent after %d attempt(s): %s", job.id, row.channel.value, row.topic,
                 row.attempts, outcome.error)
    elif outcome.permanent or row.attempts >= max_attempts:
        target, cause = OutboxStatus.DEAD, "permanent failure" if outcome.permanent else "retries exhausted"
        log.error("outbox %s (%s %s) is dead after %d attempt(s): %s", job.id, row.channel.value, row.topic,
                  row.attempts, outcome.error)
    else:
        target, cause = OutboxStatus.PENDING, f"attempt {job.attempts} failed"
        values["next_attempt_at"] = now + backoff(row.attempts)
        log.info("outbox %s attempt %d failed, next at %s: %s", job.id, row.attempts,
                 values["next_attempt_at"].isoformat(), outcome.error)
    writes.moves.append((job.id, row.status, target, cause, row.enrollment_id))
    writes.failed[job.id] = {"status": target, **values}
    row.status = target
    return target


# --------------------------------------------------------------------------- admin


def retry(*, session: Session, message_id: int, now: datetime | None = None) -> OutboxMessage:
    """An admin's Retry on a dead (or backing-off) message: due now, with a fresh attempt count."""
    now = now or utcnow()
    message = session.scalar(select(OutboxMessage).where(OutboxMessage.id == message_id).with_for_update())
    if message is None:
        raise NotFound(f"no outbox message {message_id}")
    if message.status is OutboxStatus.SENDING:  # a sender holds it: made due again, a relay would send it twice
        raise TaskError(f"outbox message {message_id} is being sent; if its sender died, it is due again when "
                        f"its lease runs out")
    if message.status is OutboxStatus.EXPIRED:  # it would only expire again
        raise TaskError(f"outbox message {message_id} expired unsent ({message.last_error}); it is not retried")
    if is_pruned(message.payload):  # it would only fail again
        raise TaskError(f"outbox message {message_id} has no body left to send (pruned by retention, or its "
                        f"student was erased); it is not retried")
    OUTBOX.move(message, OutboxStatus.PENDING, session=session, cause="admin retry",
                enrollment_id=message.enrollment_id, at=now)
    if message.status is OutboxStatus.PENDING:
        message.attempts = 0
        message.next_attempt_at = now
    return message


RETRY_DEAD_BATCH = 10_000  # dead messages made due again by one call: one request, one CLI transaction


def retry_dead(*, session: Session, channel: OutboxChannel | None = None, now: datetime | None = None,
               limit: int | None = None, after: int | None = None, through: int | None = None) -> list[int]:
    """Up to `limit` (RETRY_DEAD_BATCH) dead messages (of one channel, or all) with an id past `after` (and not
    past `through`), oldest first, due now with a fresh attempt count: one UPDATE, the moves' lines in one
    INSERT. Returns their ids, in order. A caller going through many (after a long outage there can be a
    million) passes the last id as `after`: a message that dies again meanwhile is not taken twice."""
    now = now or utcnow()
    dead = _dead(session, channel, after, through).order_by(OutboxMessage.id).limit(limit or RETRY_DEAD_BATCH)
    rows = sorted(session.execute(
        update(OutboxMessage).where(OutboxMessage.id.in_(select(_locked(session, dead).cte("dead").c.id)),
                                    OutboxMessage.status == OutboxStatus.DEAD)
        .values(status=OutboxStatus.PENDING, attempts=0, next_attempt_at=now)
        .returning(OutboxMessage.id, OutboxMessage.enrollment_id)
        .execution_options(synchronize_session=False)).all(), key=lambda row: row.id)
    OUTBOX.log_moves(session, [(row.id, OutboxStatus.DEAD, OutboxStatus.PENDING, "admin bulk retry", row.enrollment_id)
                               for row in rows], at=now)
    return [row.id for row in rows]


def dead_count(*, session: Session, channel: OutboxChannel | None = None, after: int | None = None) -> int:
    """Dead messages (of one channel, or all; with an id past `after`)."""
    return session.scalar(select(func.count()).select_from(_dead(session, channel, after, None).subquery())) or 0


def last_dead(*, session: Session, channel: OutboxChannel | None = None) -> int | None:
    """The newest dead message's id: where a pass over the dead ones ends."""
    return session.scalar(select(func.max(_dead(session, channel, None, None).subquery().c.id)))


def _dead(session: Session, channel: OutboxChannel | None, after: int | None, through: int | None):
    """The dead messages a retry could send: not those whose body is gone (retention, a student's erasure)."""
    dead = select(OutboxMessage.id).where(OutboxMessage.status == OutboxStatus.DEAD,
                                          not_pruned(session, OutboxMessage.payload))
    if channel is not None:
        dead = dead.where(OutboxMessage.channel == channel)
    if after is not None:
        dead = dead.where(OutboxMessage.id > after)
    if through is not None:
        dead = dead.where(OutboxMessage.id <= through)
    return dead


def counts(*, session: Session) -> dict[str, int]:
    """Messages by status, for dashboards."""
    rows = session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)).all()
    return {status.value: n for status, n in rows}


def problems(*, session: Session, limit: int = 50) -> list[OutboxMessage]:
    """Dead messages and ones that have failed at least once and are still to send, newest first (an expired
    one is no problem: `outbox list --status expired` lists those)."""
    return list(
        session.scalars(
            select(OutboxMessage)
            .where(or_(OutboxMessage.status == OutboxStatus.DEAD, OutboxMessage.last_error.is_not(None)),
                   OutboxMessage.status.not_in((OutboxStatus.SENT, OutboxStatus.EXPIRED)))
            .order_by(OutboxMessage.id.desc())
            .limit(limit)
        )
    )


def message_view(message: OutboxMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "channel": message.channel.value,
        "topic": message.topic,
        "recipient": message.recipient,
        "status": message.status.value,
        "attempts": message.attempts,
        "last_error": message.last_error,
        "created_at": message.created_at.isoformat(),
        "next_attempt_at": message.next_attempt_at.isoformat() if message.next_attempt_at else None,
        "sent_at": message.sent_at.isoformat() if message.sent_at else None,
        "enrollment_id": message.enrollment_id,
    }
