"""What an SMTP server's refusals make of a mail, against real aiosmtpd servers that refuse on purpose: a 5xx about
the mail is final (`dead` at once); a 4xx (greylisting, a mailbox unavailable for now) is tried again; a refusal of
the session itself (greeting, login) is about our set-up, not the mail, and is tried again until it is fixed."""
from __future__ import annotations

from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from db.enums import OutboxStatus
from db.models import OutboxMessage
from db.types import utcnow
from tasks.messaging import delivery
from tasks.messaging.outbox import ADMINS, add_mail
from tests.conftest import make_settings
from tests.tasks.messaging.outbox_servers import free_port

ANN = "ann@example.test"
CONTEXT = dict(student_name="Ann", course_code="SFZ", step_label="SFZ-1", class_title="Salsa 1",
               starts_at="2026-12-01T18:00:00+00:00", timezone="UTC", booking_id="bk_1", class_id="gc_1")


class Refusing:
    """Answers RCPT with `rcpt[address]` (else accepts) and DATA with `data` (else accepts); keeps what it got."""

    def __init__(self, rcpt: dict[str, str] | None = None, data: str | None = None):
        self.rcpt, self.data, self.received = rcpt or {}, data, []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt:
            return self.rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data:
            return self.data
        self.received.append(list(envelope.rcpt_tos))
        return "250 OK"


def _server(handler, **options) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=10, **options)
    controller.start()
    return controller, port


def _attempt(database, settings, recipient=ANN, message_id=None, now=None):
    """One attempt at a mail (a new one unless `message_id`) the way the relay makes it: claim, send outside a
    transaction, record. Returns the outcome and the row's status and last error after it."""
    if message_id is None:
        with database.session_scope() as s:
            message_id = add_mail(session=s, template="booking_confirmed", recipient=recipient, context=CONTEXT,
                                  dedupe_key=f"t:{recipient}").id
    with database.session_scope() as s:
        job = delivery.claim(session=s, message_id=message_id, settings=settings, now=now)
    outcome = delivery.transmit(job, settings=settings, timeout=5)
    with database.session_scope() as s:
        delivery.record(session=s, job=job, outcome=outcome, now=now)
    with database.session_scope() as s:
        row = s.get(OutboxMessage, message_id)
        return outcome, row.status, row.last_error


@pytest.mark.parametrize("reply, final", [
    ("450 4.2.0 Greylisted, try again later", False),
    ("451 4.3.0 Mailbox temporarily unavailable", False),
    ("550 5.1.1 No such user", True),
], ids=["greylisted", "unavailable-for-now", "no-such-user"])
def test_a_refused_recipient_is_dead_only_when_the_refusal_is_final(database, reply, final):
    """Before: every refusal at RCPT TO, a greylisting 450 included, made the mail dead at its first attempt."""
    controller, port = _server(Refusing(rcpt={ANN: reply}))
    try:
        settings = make_settings(database.url, smtp_url=f"smtp://127.0.0.1:{port}")
        outcome, status, error = _attempt(database, settings)
    finally:
        controller.stop()
    assert outcome.permanent is final
    assert status is (OutboxStatus.DEAD if final else OutboxStatus.PENDING)
    assert error == f"all recipients refused: SMTP {reply[:3]}"


def test_an_alert_refused_finally_by_one_admin_and_for_now_by_the_other_is_tried_again(database):
    settings_admins = ("ops@example.test", "lead@example.test")
    controller, port = _server(Refusing(rcpt={"ops@example.test": "550 5.1.1 No such user",
                                              "lead@example.test": "450 4.2.0 Greylisted"}))
    try:
        settings = make_settings(database.url, smtp_url=f"smtp://127.0.0.1:{port}",
                                 admin_alert_emails=settings_admins)
        outcome, status, error = _attempt(database, settings, recipient=ADMINS)
    finally:
        controller.stop()
    assert (outcome.permanent, status, error) == (False, OutboxStatus.PENDING, "all recipients refused: SMTP 450, 550")


def test_a_final_refusal_of_the_mail_itself_is_still_dead_at_once(database):
    controller, port = _server(Refusing(data="554 5.6.0 Message refused"))
    try:
        settings = make_settings(database.url, smtp_url=f"smtp://127.0.0.1:{port}")
        outcome, status, error = _attempt(database, settings)
    finally:
        controller.stop()
    assert (outcome.permanent, status) == (True, OutboxStatus.DEAD) and error.startswith("SMTP 554:")


def test_a_refused_login_is_tried_again_and_the_mail_goes_once_the_password_is_right(database):
    """A 535 at login (an SMTP password being rotated) says nothing of the mail. Before: every mail that met it was
    dead at once, each to be retried by hand; now it waits, as a platform event waits out a rotated secret."""
    handler = Refusing()

    def authenticator(server, session, envelope, mechanism, auth_data):
        return AuthResult(success=getattr(auth_data, "password", None) == b"new-password", handled=False)

    controller, port = _server(handler, auth_require_tls=False, authenticator=authenticator)
    try:
        old = make_settings(database.url, smtp_url=f"smtp://user:old-password@127.0.0.1:{port}")
        outcome, status, error = _attempt(database, old)
        assert (outcome.permanent, status) == (False, OutboxStatus.PENDING), outcome
        assert error.startswith("SMTP 535 opening the session:") and handler.received == []
        new = make_settings(database.url, smtp_url=f"smtp://user:new-password@127.0.0.1:{port}")
        with database.session_scope() as s:
            [message_id] = s.scalars(select(OutboxMessage.id)).all()
        later = utcnow() + timedelta(hours=1)  # past the first backoff
        outcome, status, error = _attempt(database, new, message_id=message_id, now=later)
        assert (outcome.ok, status) == (True, OutboxStatus.SENT), outcome
    finally:
        controller.stop()
    assert handler.received == [[ANN]]
