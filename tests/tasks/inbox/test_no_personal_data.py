"""No customer e-mail in a log line or an event's stored `last_error`: a statement the database refuses names
no bound value (engines hide parameters), and a buyer we cannot identify is named by a hash of the address."""
from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import select

from coursepipe.logs import JsonFormatter
from db.enums import InboxSource, InboxStatus
from db.models import InboxEvent, Student
from tasks.purchases.fulfilment import email_reference
from tests import factories
from tests import inbox_api as inbox
from tests.signing import platform_event
from tests.tasks.purchases.payments_support import checkout
from tests.tasks.purchases.payments_support import store as store_stripe

EMAIL = "ann.private@example.test"


def _too_long_name(ctx, event):
    """A value the column cannot hold, beside the customer's e-mail in the same INSERT."""
    ctx.session.add(Student(id="stu_pii", email=EMAIL, name="x" * 500))  # name is VARCHAR(200)
    ctx.session.flush()


def _lines(caplog) -> list[str]:
    """Each record as the processes write it (JSON), and its raw message (what any other handler would print)."""
    return [JsonFormatter().format(r) for r in caplog.records] + [r.getMessage() for r in caplog.records]


def _last_error(database, inbox_id: int) -> str:
    with database.session_scope() as s:
        return s.scalar(select(InboxEvent.last_error).where(InboxEvent.id == inbox_id))


@pytest.mark.postgres
def test_a_data_error_names_no_email_in_last_error_or_the_logs(pg_database, caplog):
    event = platform_event("test.too_long", {"email": EMAIL})
    with pg_database.session_scope() as s:
        inbox_id = inbox.store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"],
                                     type="test.too_long", payload=event, subject=None, occurred_at=None).id
    with caplog.at_level(logging.DEBUG):
        result = inbox.run_event(unit_of_work=pg_database.session_scope, inbox_id=inbox_id, fast=False,
                                 handlers={("platform", "test.too_long"): _too_long_name})
    assert result.outcome is inbox.Outcome.FAILED
    stored = _last_error(pg_database, inbox_id)
    assert stored.startswith("DataError: ") and "value too long" in stored
    assert "parameters hidden" in stored and EMAIL not in stored
    lines = _lines(caplog)
    assert any("value too long" in line for line in lines)  # the failure is logged, without the address
    assert not [line for line in lines if EMAIL in line]


def test_an_unknown_buyer_is_named_by_a_hash_of_the_email(database, caplog):
    with database.session_scope() as s:
        factories.program(s)
    event = checkout(cs="cs_pii", pi="pi_pii", student=None, email=EMAIL)
    inbox_id = store_stripe(database, event)
    with caplog.at_level(logging.DEBUG):
        result = inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_id, fast=False)
    assert result.outcome is inbox.Outcome.FAILED
    stored = _last_error(database, inbox_id)
    assert "UnknownBuyer" in stored and email_reference(EMAIL) in stored and EMAIL not in stored
    assert email_reference(EMAIL.upper()) == email_reference(EMAIL)  # the same address, however typed
    lines = _lines(caplog)
    assert any(email_reference(EMAIL) in line for line in lines)
    assert not [line for line in lines if EMAIL in line]
    with database.session_scope() as s:
        assert s.get(InboxEvent, inbox_id).status == InboxStatus.FAILED


def test_an_address_in_any_error_text_is_redacted_where_it_is_stored_and_logged(database):
    """The net under the two above: whatever raised it (an SMTP server quoting the address it refused)."""
    event = platform_event("test.anything", {})
    with database.session_scope() as s:
        inbox_id = inbox.store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"],
                                     type="test.anything", payload=event, subject=None, occurred_at=None).id
        s.get(InboxEvent, inbox_id).last_error = f"SMTP 550: b'5.1.1 <{EMAIL}>: Recipient address rejected'"
    assert _last_error(database, inbox_id) == "SMTP 550: b'5.1.1 <<e-mail>>: Recipient address rejected'"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "refused %s", (EMAIL,), None)
    record.event = {"error": f"550 {EMAIL}", "inbox_id": inbox_id}
    line = json.loads(JsonFormatter().format(record))
    assert (line["msg"], line["error"], line["inbox_id"]) == ("refused <e-mail>", "550 <e-mail>", inbox_id)


@pytest.mark.parametrize("text, redacted", [
    ("refused ann@example.test", "refused <e-mail>"),
    ("<ann.b+c@ex-a.co.uk>, x'y@z.io", "<<e-mail>>, <e-mail>"),
    ("a@b (no dot) and a@b.c@d.e", "a@b (no dot) and <e-mail>@d.e"),
    ("ann@@example.test", "ann@@example.test"),
])
def test_an_address_in_free_text_is_redacted(text, redacted):
    from db.types import redact_emails

    assert redact_emails(text) == redacted


def test_a_long_line_without_an_address_is_redacted_in_one_pass():
    """A denial of service, not a speed goal: the redaction runs over every log line (a request's path, its
    User-Agent) and every stored error. It scanned a run of address characters again from each of its positions,
    so time grew with the square of the run: 70 KB took 15 s of a worker, the 2 MB here would take hours. One pass
    takes milliseconds; the bound only keeps a regression from hanging the suite."""
    import threading

    from db.types import redact_emails

    lines = ["a" * 2_000_000, "x@" + "b" * 2_000_000, "a." * 1_000_000 + "@example.test"]
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.extend(redact_emails(line) for line in lines), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "redacting 6 MB of address characters did not end within 60 s"
    assert done[:2] == lines[:2] and done[2] == "<e-mail>"
