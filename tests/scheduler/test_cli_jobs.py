"""`coursepipe jobs list` and `coursepipe jobs run NAME` (a real subprocess, embedded broker, real SMTP)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

from db.database import Database
from db.migrate import upgrade
from tests import factories
from tests.tasks.messaging.outbox_servers import smtp_sink  # noqa: F401  (fixture)

CLI = [sys.executable, "-m", "coursepipe.cli"]


def _env(url, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SMTP_URL")}
    env.update(DATABASE_URL=url, **extra)
    return env


def test_jobs_run_delivers_its_mail_in_process_and_jobs_list_shows_the_run(tmp_path, smtp_sink):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    db = Database(url)
    with db.session_scope() as s:
        program = factories.program(s, steps=2)
        factories.group_class(s, id="gc_SFZ_1_0", title="Basics", starts_in=timedelta(days=2))
        student = factories.student(s, email="ann@example.test", timezone="Europe/Paris")
        factories.enrollment(s, student, program)
    db.dispose()
    env = _env(url, SMTP_URL=smtp_sink.url, REMINDERS_ENABLED="true", MAIL_FROM="courses@example.test")

    run = subprocess.run([*CLI, "jobs", "run", "reminders"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert 'job reminders: done; outbox {"sent": 1}' in run.stdout
    assert len(smtp_sink.messages) == 1
    message = smtp_sink.messages[0]
    assert message["To"] == "ann@example.test" and "SFZ-1" in message["Subject"]

    again = subprocess.run([*CLI, "jobs", "run", "reminders"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len(smtp_sink.messages) == 1  # once per step per window

    listed = subprocess.run([*CLI, "jobs", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    rows = {r["name"]: r for r in map(json.loads, listed.stdout.splitlines())}
    assert {"sweep", "relay", "low-seats", "reminders", "reconcile"} <= set(rows)
    assert rows["reminders"]["last_run"] and rows["reconcile"]["last_run"] is None
    # the actor recorded that it finished, and what it did (the second run found nothing new to remind)
    assert rows["reminders"]["last_finished"] and rows["reminders"]["last_result"] == {"reminders_queued": 0}
    table = subprocess.run([*CLI, "jobs", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert "reminders_queued=0" in table.stdout


def test_jobs_run_rejects_an_unknown_job(tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    proc = subprocess.run([*CLI, "jobs", "run", "nope"], env=_env(url), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "unknown job 'nope'" in proc.stderr


def test_outbox_list_and_retry_a_dead_message(tmp_path):
    from db.enums import OutboxStatus
    from db.models import OutboxMessage
    from tasks.messaging.outbox import add_mail

    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    upgrade(url)
    db = Database(url)
    with db.session_scope() as s:
        message = add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                           dedupe_key="dead")
        message.status, message.attempts, message.last_error = OutboxStatus.DEAD, 8, "SMTP 550"
        message_id = message.id
    listed = subprocess.run([*CLI, "outbox", "list"], env=_env(url), capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["id"], r["status"], r["last_error"]) for r in rows] == [(message_id, "dead", "SMTP 550")]
    retried = subprocess.run([*CLI, "outbox", "retry", str(message_id)], env=_env(url), capture_output=True,
                             text=True, timeout=60)
    assert retried.returncode == 0, retried.stderr
    with db.session_scope() as s:
        row = s.get(OutboxMessage, message_id)
        assert (row.status, row.attempts) == (OutboxStatus.PENDING, 0)
    missing = subprocess.run([*CLI, "outbox", "retry", "999"], env=_env(url), capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode != 0 and "no outbox message 999" in missing.stderr
    db.dispose()


def test_outbox_retry_dead_makes_every_dead_message_due(tmp_path):
    from db.enums import OutboxStatus
    from db.models import OutboxMessage
    from tasks.messaging.outbox import add_mail, add_platform_event, mail_dedupe

    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    upgrade(url)
    db = Database(url)
    with db.session_scope() as s:
        rows = [add_mail(session=s, template="step_reminder", recipient="a@example.test", context={},
                         dedupe_key=f"dead{n}") for n in range(2)]
        rows.append(add_platform_event(session=s, type="booking.rejected", data={}, dedupe_key="dead-event"))
        for row in rows:
            row.status, row.attempts = OutboxStatus.DEAD, 79
        sent = add_mail(session=s, template="step_reminder", recipient="b@example.test", context={}, dedupe_key="ok")
        sent.status = OutboxStatus.SENT
    done = subprocess.run([*CLI, "outbox", "retry-dead", "--channel", "mail"], env=_env(url), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 dead outbox message(s) due again" in done.stdout
    with db.session_scope() as s:
        statuses = {r.dedupe_key: (r.status, r.attempts) for r in s.query(OutboxMessage)}
    a, b = mail_dedupe("dead0", "a@example.test"), mail_dedupe("dead1", "a@example.test")
    assert statuses[a] == statuses[b] == (OutboxStatus.PENDING, 0)
    assert statuses["platform:dead-event"] == (OutboxStatus.DEAD, 79)
    assert statuses[mail_dedupe("ok", "b@example.test")][0] is OutboxStatus.SENT
    db.dispose()


def test_jobs_run_says_so_when_the_broker_refuses_the_message(tmp_path):
    """With Redis unreachable the command printed "queued" and exited 0, and the job_run row stayed unfinished."""
    from sqlalchemy import select

    from db.models import AuditEntry, JobRun

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    env = _env(url, REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    proc = subprocess.run([*CLI, "jobs", "run", "reminders", "--reason", "test"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "queued" not in proc.stdout and "send_reminders was not queued" in proc.stderr
    db = Database(url)
    try:
        with db.session_scope() as s:
            run = s.scalar(select(JobRun))
            assert run.job == "reminders" and run.finished_at is not None and "not queued" in run.result["error"]
            audit = s.scalar(select(AuditEntry))
            assert (audit.action, audit.details["queued"]) == ("job.run", False)
    finally:
        db.dispose()
