"""Bad input to a command is one line and a non-zero exit, never a traceback, and changes nothing; a command
that failed does not say it succeeded."""
from __future__ import annotations

import secrets

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from coursepipe.cli import main
from db.migrate import head_revision, upgrade

SECRET = secrets.token_urlsafe(32)


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)

    def run(*args: str, database_url: str | None = None, **env: str):
        if database_url is not None:
            monkeypatch.setenv("DATABASE_URL", database_url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return CliRunner().invoke(main, list(args))

    return run


def _refused(result, text: str, code: int = 1, *, logged: bool = False) -> None:
    """Refused as click refuses: a SystemExit with `code`, `text` in the one error line, no traceback (`logged`:
    a worker's own log lines may carry one, as they do for any failed actor)."""
    assert isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and text in errors[0], result.output
    assert logged or "Traceback" not in result.output


@pytest.fixture
def migrated(tmp_path):
    url = f"sqlite:///{tmp_path / 'cp.db'}"
    upgrade(url)
    return url


def test_migrations_refused_in_one_line(cli, migrated, tmp_path):
    """Before: an unknown revision, a database that does not answer or a directory that does not exist was an
    Alembic or SQLAlchemy traceback; an upgrade to a revision behind the database said "database at 0010" and
    exited 0, the database still at the head."""
    _refused(cli("db", "upgrade", "nonsense", database_url=migrated), "database not migrated")
    _refused(cli("db", "upgrade", database_url="postgresql+psycopg://u:p@127.0.0.1:1/x"), "database not migrated")
    _refused(cli("db", "upgrade", database_url=f"sqlite:///{tmp_path}/no/such/dir/x.db"), "database not migrated")
    behind = cli("db", "upgrade", "0010", database_url=migrated)
    head = head_revision()
    _refused(behind, f"the database stayed at {head}: 0010 is not ahead of it")
    done = cli("db", "upgrade", database_url=migrated)
    assert done.exit_code == 0 and done.output.strip().endswith(f"database at {head}")


def test_a_database_url_coursepipe_cannot_use_is_one_line_and_a_doctor_fail(cli):
    _refused(cli("events", "list", database_url="garbage"), "DATABASE_URL is not usable")
    doctor = cli("doctor", database_url="garbage")
    assert doctor.exit_code == 1 and "fail database: DATABASE_URL is not usable" in doctor.output
    assert "Traceback" not in doctor.output


def test_a_redis_url_redis_cannot_read_is_one_line_and_a_doctor_fail(cli, migrated):
    """Before: redis-py's ValueError ("Redis URL must specify one of the following schemes") escaped as a
    traceback from whichever command reached Redis first, the doctor's included."""
    for args in (["events", "replay", "1"], ["jobs", "run", "sweep"], ["outbox", "list"], ["scheduler"], ["worker"]):
        _refused(cli(*args, database_url=migrated, REDIS_URL="localhost:6379"), "REDIS_URL is not a Redis URL")
    doctor = cli("doctor", database_url=migrated, REDIS_URL="localhost:6379")
    assert doctor.exit_code == 1 and "fail redis: REDIS_URL is not a Redis URL" in doctor.output, doctor.output
    assert "ok   database:" in doctor.output and "Traceback" not in doctor.output  # the other checks still ran


@pytest.mark.parametrize("name,job", [("RETENTION_DAYS", "retention"), ("WAIT_HORIZON_HOURS", "retry-waiting"),
                                      ("REMINDER_WINDOW_DAYS", "reminders")])
def test_a_day_or_hour_setting_runs_its_job_at_its_bound_and_is_refused_beyond(cli, migrated, name, job):
    """Before: RETENTION_DAYS=999999 (or a wait horizon or reminder window as long) was accepted, then every run
    of its job failed with an OverflowError (date value out of range)."""
    from coursepipe.settings import MAX_DAYS, MAX_HOURS

    bound = MAX_HOURS if name.endswith("_HOURS") else MAX_DAYS
    done = cli("jobs", "run", job, database_url=migrated, REMINDERS_ENABLED="true", **{name: str(bound)})
    assert done.exit_code == 0, done.output
    _refused(cli("jobs", "run", job, database_url=migrated, **{name: str(bound * 1000)}),
             f"{name} must be between 1 and {bound}")


def test_a_port_beyond_65535_in_the_environment_is_refused_as_the_option_is(cli, migrated, monkeypatch):
    """Before: PORT=99999 passed the settings and `serve` listened on 99999 % 65536 = 34463."""
    def listening(host, port, app):
        raise AssertionError(f"serve went on to listen on {port}")

    monkeypatch.setattr("ingress.serving.make_ingress_server", listening)  # never serve_forever in a test
    _refused(cli("serve", database_url=migrated, PORT="99999", STRIPE_WEBHOOK_SECRET="whsec_" + SECRET,
                 PLATFORM_WEBHOOK_SECRET=SECRET, ADMIN_TOKEN=SECRET[::-1]), "PORT must be between 1 and 65535")


@pytest.mark.parametrize("args", [
    ["events", "replay", "99999999999999999999"], ["events", "list", "--limit", "99999999999999999999"],
    ["refulfill", "--enrollment", "99999999999999999999"], ["outbox", "retry", "99999999999999999999"],
    ["outbox", "list", "--limit", "0"], ["serve", "--threads", "0"], ["serve", "--port", "99999"],
    ["worker", "--processes", "0"],
], ids=lambda args: " ".join(args[:2]))
def test_numbers_no_id_or_setting_can_be_are_a_usage_error(cli, migrated, args):
    """Before: an OverflowError traceback for ids beyond 64 bits; `serve --threads 0` started and never applied
    an event; `--port 99999` listened on another port."""
    result = cli(*args, database_url=migrated)
    assert result.exit_code == 2 and "Invalid value" in result.output and "Traceback" not in result.output


def test_simulate_against_a_bad_address_is_one_line(cli, migrated):
    _refused(cli("simulate", "student.upserted", "--url", "foo", database_url=migrated,
                 PLATFORM_WEBHOOK_SECRET=SECRET), "unreachable")
    _refused(cli("simulate", "student.upserted", "--url", "http://[::1", database_url=migrated,
                 PLATFORM_WEBHOOK_SECRET=SECRET), "unreachable")


def test_courses_import_says_which_field_is_wrong(cli, migrated, tmp_path):
    """A YAML file with keys of two types was a TypeError; a Stripe price given to two packages was "a concurrent
    change … run the import again", which could never succeed."""
    odd = tmp_path / "odd.yaml"
    odd.write_text("courses: []\n1: x\nfoo: y\n")
    _refused(cli("courses", "import", str(odd), database_url=migrated), "1: unknown field")
    shared = tmp_path / "shared.yaml"
    package = "  - {{code: {code}, title: {code}, price: {{amount: 5000, currency: eur}}, " \
              "credits: {{kind: group, quantity: 5}}, stripe_price_id: price_SAME}}\n"
    shared.write_text("packages:\n" + package.format(code="P1") + package.format(code="P2"))
    _refused(cli("courses", "import", str(shared), database_url=migrated),
             "stripe_price_id: price_SAME is already the price of package P1")
    from db.database import Database
    from db.models import CreditPackage

    database = Database(migrated)
    try:
        with database.session_scope() as s:
            assert s.scalars(select(CreditPackage)).all() == []  # nothing was imported
    finally:
        database.dispose()


def test_jobs_run_in_process_says_so_when_the_job_failed(cli, migrated):
    """`jobs run reconcile` with Stripe unreachable printed "done" and exited 0, the actor's failure only in the
    log."""
    result = cli("jobs", "run", "reconcile", database_url=migrated, STRIPE_API_KEY="sk_test_" + "x" * 24,
                 STRIPE_API_BASE="http://127.0.0.1:1")
    _refused(result, "job reconcile failed: APIConnectionError", logged=True)
    assert "done" not in result.output


# (WEB_CONCURRENCY that is no number at all is gunicorn's own to refuse: it reads the variable before any config)
@pytest.mark.parametrize("name,value", [("WEB_CONCURRENCY", "0"), ("WEB_THREADS", "abc"), ("WEB_THREADS", "2000"),
                                        ("HEADER_READ_TIMEOUT", "nan"), ("BODY_READ_TIMEOUT", "-1")])
def test_a_gunicorn_setting_out_of_its_range_stops_gunicorn_in_one_line(name, value):
    """`coursepipe ingress` and gunicorn run by hand read these from the environment. Before: `int()`/`float()`
    raised, and gunicorn printed "Failed to read config file" and a traceback (or took NaN as a timeout)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, name: value}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "python:ingress.gunicorn_conf", "--check-config",
                           "ingress.wsgi:app"], env=env, capture_output=True, text=True, timeout=60)
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 1 and line.startswith(f"Error: {name} must be a number from ")
    assert line.endswith(f", got {value!r}")
