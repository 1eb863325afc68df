"""Every command that changes something writes its audit entry: who (`cli:<os user>`), what, on what, and
the `--reason` when given; a refused command writes none and changes nothing."""
from __future__ import annotations

import getpass
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from coursepipe.cli import main
from db.enums import InboxSource, InboxStatus, OutboxChannel, OutboxStatus
from db.models import AuditEntry, InboxEvent, OutboxMessage
from tests import factories

ACTOR = f"cli:{getpass.getuser()}"


@pytest.fixture
def cli(database, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database.url)
    monkeypatch.delenv("REDIS_URL", raising=False)

    def run(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run


def _entries(database) -> list[tuple]:
    with database.session_scope() as s:
        return [(e.actor, e.role, e.action, e.target, e.reason)
                for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]


def test_replay_refulfill_and_retries_are_audited(database, cli):
    with database.session_scope() as s:
        failed = InboxEvent(source=InboxSource.PLATFORM, event_id="pev_cli", type="no.handler", payload={},
                            status=InboxStatus.FAILED, last_error="boom")
        student = factories.student(s)
        enrollment = factories.enrollment(s, student, factories.program(s), session_id="cs_cli")
        dead = OutboxMessage(dedupe_key="cli-dead", channel=OutboxChannel.PLATFORM, topic="enrollment.created",
                             payload={}, status=OutboxStatus.DEAD, attempts=8)
        other_dead = OutboxMessage(dedupe_key="cli-dead-2", channel=OutboxChannel.MAIL, topic="enrollment_welcome",
                                   recipient="stu1@example.test", payload={}, status=OutboxStatus.DEAD, attempts=8)
        s.add_all([failed, dead, other_dead])
        s.flush()
        inbox_id, enrollment_id, dead_id = failed.id, enrollment.id, dead.id

    replayed = cli("events", "replay", str(inbox_id), "--reason", "handler deployed")
    assert replayed.exit_code == 0, replayed.output
    refulfilled = cli("refulfill", "--enrollment", str(enrollment_id), "--reason", "lost step, ticket 7")
    assert refulfilled.exit_code == 0, refulfilled.output
    assert cli("outbox", "retry", str(dead_id)).exit_code == 0
    assert cli("outbox", "retry-dead", "--channel", "mail", "--reason", "SMTP fixed").exit_code == 0

    entries = _entries(database)
    assert entries[:1] == [(ACTOR, "owner", "event.replay", f"inbox_event:{inbox_id}", "handler deployed")]
    assert (ACTOR, "owner", "enrollment.refulfill", f"enrollment:{enrollment_id}", "lost step, ticket 7") in entries
    assert (ACTOR, "owner", "outbox.retry", f"outbox_message:{dead_id}", None) in entries
    assert (ACTOR, "owner", "outbox.retry_dead", "outbox:mail", "SMTP fixed") in entries
    with database.session_scope() as s:
        assert s.scalar(select(AuditEntry).where(AuditEntry.action == "outbox.retry_dead")).details == {"retried": 1}



def test_retry_dead_goes_on_a_batch_at_a_time_until_none_is_left(database, cli, monkeypatch):
    from tasks.messaging import delivery

    monkeypatch.setattr(delivery, "RETRY_DEAD_BATCH", 2)
    with database.session_scope() as s:
        s.add_all([OutboxMessage(dedupe_key=f"dead-{n}", channel=OutboxChannel.PLATFORM, topic="enrollment.created",
                                 payload={}, status=OutboxStatus.DEAD, attempts=8) for n in range(5)])
    done = cli("outbox", "retry-dead")
    assert done.exit_code == 0 and "5 dead outbox message(s) due again" in done.output
    with database.session_scope() as s:
        assert {m.status for m in s.scalars(select(OutboxMessage))} == {OutboxStatus.PENDING}
        assert [e.details for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))] == [
            {"retried": 2}, {"retried": 2}, {"retried": 1}]

def test_refused_commands_write_nothing(database, cli):
    with database.session_scope() as s:
        s.add(InboxEvent(source=InboxSource.PLATFORM, event_id="pev_done", type="student.upserted", payload={},
                         status=InboxStatus.PROCESSED))
        s.flush()
        inbox_id = s.scalar(select(InboxEvent.id))
    assert cli("events", "replay", str(inbox_id)).exit_code == 1  # processed: not replayable
    assert cli("events", "replay", "999999").exit_code == 1
    assert cli("refulfill", "--enrollment", "999999").exit_code == 1
    assert cli("outbox", "retry", "999999").exit_code == 1
    too_long = cli("events", "replay", str(inbox_id), "--reason", "x" * 2001)
    assert too_long.exit_code == 2 and "--reason" in too_long.output
    assert _entries(database) == []
    with database.session_scope() as s:
        assert s.get(InboxEvent, inbox_id).status is InboxStatus.PROCESSED


def test_catalog_import_and_job_runs_are_audited(database, cli, tmp_path):
    file = tmp_path / "catalog.json"
    file.write_text(json.dumps({"courses": [{
        "code": "CLI", "title": "From the CLI", "timezone": "Europe/Berlin",
        "price": {"amount": 9000, "currency": "eur"},
        "steps": [{"label": "CLI-1", "title": "One", "options": []}]}]}))
    imported = cli("courses", "import", str(file), "--reason", "spring term")
    assert imported.exit_code == 0, imported.output
    ran = cli("jobs", "run", "low-seats")
    assert ran.exit_code == 0, ran.output
    assert cli("jobs", "run", "no-such-job").exit_code == 1
    entries = _entries(database)
    assert entries == [(ACTOR, "owner", "course.save", "course:CLI", "spring term"),
                       (ACTOR, "owner", "job.run", "job:low-seats", None)]
