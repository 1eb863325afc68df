"""The `coursepipe` command: processes, migrations, the inbox; course authoring, re-fulfilment and
the scheduler's jobs are registered from modules of their own."""
from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading

import click

from coursepipe.cli_support import ROW_ID, checked_reason, one_line, process_database, reason_option, record_cli_action
from coursepipe.cli_support import runtime_for as _runtime
from coursepipe.cli_support import settings_for as _settings
from coursepipe.settings import INGRESS_SECRETS

GUNICORN_CONFIG = "ingress.gunicorn_conf"  # the ingress's gunicorn settings: a module, so an installed package has them


def _setup_logging() -> None:
    from coursepipe.logs import configure_logging

    configure_logging()


@click.group()
def main() -> None:
    """coursepipe: course-program fulfilment pipeline."""
    _setup_logging()


# --------------------------------------------------------------------------- processes


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="HTTP port (default: PORT or 8000)")
@click.option("--host", default=None, help="address to listen on (default: HOST or 127.0.0.1; 0.0.0.0 for all)")
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True, help="worker threads")
def serve(port: int | None, host: str | None, threads: int) -> None:
    """Everything in one process: ingress + worker threads + scheduler."""
    from ingress.app import create_app
    from ingress.serving import make_ingress_server
    from scheduler.service import start_background_scheduler
    from workers.actors import send
    from workers.broker import start_embedded_worker

    settings = _settings(*INGRESS_SECRETS)
    runtime = _runtime(settings)
    runtime.db.ping()
    app = create_app(settings, runtime=runtime)
    worker = start_embedded_worker(runtime.broker, threads=threads)
    # messages of the embedded broker die with the process: re-send whatever is still pending
    send("sweep_inbox", 0)
    scheduler = start_background_scheduler(runtime)
    host = host or settings.host
    server = make_ingress_server(host, port or settings.port, app)
    mode = "redis" if settings.redis_url else "embedded broker"
    click.echo(f"coursepipe serve: http://{host}:{server.server_port} ({runtime.db.dialect}, {mode})")

    def _stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.serve_forever()
    finally:
        scheduler.shutdown(wait=False)
        worker.stop()
        runtime.db.dispose()


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None)
@click.option("--host", default=None, help="address to listen on (default: HOST or 127.0.0.1; 0.0.0.0 for all)")
@click.option("--workers", "n_workers", type=click.IntRange(min=1), default=2, show_default=True)
def ingress(port: int | None, host: str | None, n_workers: int) -> None:
    """The Flask ingress alone, under gunicorn."""
    settings = _settings(*INGRESS_SECRETS)
    if not settings.redis_url:
        raise click.ClickException("REDIS_URL is required for a separate ingress (use `coursepipe serve` embedded)")
    process_database(settings.database_url).dispose()
    # the settings module of the package, whatever the directory and wherever the package is installed
    args = [sys.executable, "-m", "gunicorn", "-c", f"python:{GUNICORN_CONFIG}",
            "--bind", f"{host or settings.host}:{port or settings.port}", "--workers", str(n_workers), "ingress.wsgi:app"]
    os.execv(sys.executable, args)


@main.command()
@click.option("--processes", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--metrics", is_flag=True, help="also serve Prometheus metrics (workers.prometheus, :9191)")
def worker(processes: int, threads: int, metrics: bool) -> None:
    """Dramatiq worker processes (needs REDIS_URL)."""
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("REDIS_URL is required for `coursepipe worker`")
    process_database(settings.database_url).dispose()
    # Dramatiq's main process in this one: logging is set up already (JSON), so Dramatiq's own set-up,
    # a basicConfig, leaves it alone, and each worker process re-points it at its pipe (workers.app)
    args = make_argument_parser().parse_args(["workers.prometheus" if metrics else "workers.app",
                                              "--processes", str(processes), "--threads", str(threads)])
    sys.exit(dramatiq_main(args))


@main.command()
def scheduler() -> None:
    """APScheduler process; several may run, one leader acts."""
    from scheduler.service import run_blocking_scheduler

    settings = _settings()
    if not settings.redis_url:
        raise click.ClickException("REDIS_URL is required for a separate scheduler (`serve` embeds one)")
    run_blocking_scheduler(_runtime(settings, process=True))


# --------------------------------------------------------------------------- database


@main.group()
def db() -> None:
    """Database migrations."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Alembic migrations to head (or REVISION)."""
    from db.migrate import upgrade

    settings = _settings()
    _migrate(upgrade, settings.database_url, revision)


def _migrate(move, url: str, revision: str) -> None:
    """Run Alembic's `move` to `revision` and say where the database is after it: one line on any refusal
    (an unknown or later revision, a database that does not answer, a directory that does not exist)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from db.database import Database
    from db.migrate import current_revision

    try:
        move(url, revision)
        database = Database(url)
        try:
            reached = current_revision(database.engine)
        finally:
            database.dispose()
    except (CommandError, SQLAlchemyError, OSError, ImportError) as exc:
        raise click.ClickException(one_line(f"database not migrated: {exc}{_later_release(url)}")) from None
    click.echo(f"database at {reached or 'base'}")
    relative = revision in ("head", "heads", "base") or any(c in revision for c in "+-@:")
    if not relative and revision != reached:
        raise click.ClickException(f"the database stayed at {reached or 'base'}: {revision} is not ahead of it "
                                   "(`coursepipe db downgrade` goes back)")


def _later_release(url: str) -> str:
    """Said after a refused migration when the database is at a revision this release does not have."""
    from db.database import Database
    from db.migrate import current_revision, head_revision, known_revisions

    try:
        database = Database(url)
        try:
            current = current_revision(database.engine)
        finally:
            database.dispose()
    except Exception:  # the refusal itself already says what went wrong
        return ""
    if current is None or current in known_revisions():
        return ""
    return (f" (the database is at {current}, which a later release made: run `coursepipe db downgrade "
            f"{head_revision()}` with that release)")


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
def db_downgrade(revision: str, yes: bool) -> None:
    """Alembic migrations down to REVISION (`base` removes every table, and every row with it). Asks first."""
    from db.migrate import downgrade

    settings = _settings()
    if not yes:
        click.confirm(f"Downgrade the database to {revision}? What the migrations undone hold is lost"
                      + (" (base: every table and its rows)" if revision == "base" else ""), abort=True)
    _migrate(downgrade, settings.database_url, revision)


# --------------------------------------------------------------------------- inbox


@main.group()
def events() -> None:
    """Inbox inspection and replay."""


@events.command("list")
@click.option("--status", type=click.Choice(["pending", "processing", "processed", "ignored", "waiting", "failed"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--before", type=ROW_ID, default=None,
              help="only events older than this id (the last id of the previous page); newest first")
def events_list(status: str | None, limit: int, before: int | None) -> None:
    from db.enums import InboxStatus
    from tasks.inbox import admin as inbox

    runtime = _runtime(_settings())
    with runtime.db.session_scope() as session:
        rows = inbox.list_events(session=session, status=InboxStatus(status) if status else None, limit=limit,
                                 before=before)
        views = [inbox.event_view(e) for e in rows]
    for view in views:
        click.echo(json.dumps(view))


@events.command("replay")
@click.argument("inbox_id", type=ROW_ID)
@reason_option
def events_replay(inbox_id: int, reason: str | None) -> None:
    """Put an event back to pending and process it (in-process when no REDIS_URL); audited."""
    from tasks.errors import NotFound
    from tasks.inbox import admin as inbox
    from workers import inbox_runs
    from workers.actors import enqueue_inbox

    reason = checked_reason(reason)
    settings = _settings()
    runtime = _runtime(settings)
    try:
        with runtime.db.session_scope() as session:
            inbox.replay(session=session, inbox_id=inbox_id)
            record_cli_action(session, "event.replay", f"inbox_event:{inbox_id}", reason)
    except (NotFound, inbox.NotReplayable) as exc:
        raise click.ClickException(one_line(str(exc))) from None
    if settings.redis_url:
        enqueue_inbox([inbox_id])
        click.echo(f"event {inbox_id} queued for replay")
        return
    result = inbox_runs.run_event(unit_of_work=runtime.db.session_scope, inbox_id=inbox_id,
                                  handlers=runtime.handlers, settings=settings)
    click.echo(f"event {inbox_id}: {result.outcome.value}" + (f" ({result.error})" if result.error else ""))
    if result.outcome.value not in ("processed", "ignored"):
        sys.exit(1)


@main.command()
@click.argument("type_", metavar="TYPE")
@click.option("--data", default=None, help="JSON object merged over the example data (Stripe: over data.object)")
@click.option("--url", default=None, help="the running instance (default: http://127.0.0.1:PORT)")
def simulate(type_: str, data: str | None, url: str | None) -> None:
    """Send one correctly signed platform or Stripe test event to a running instance."""
    from coursepipe import simulate as sim

    try:
        changes = json.loads(data) if data else {}
    except ValueError as exc:
        raise click.ClickException(one_line(f"--data is not JSON: {exc}")) from None
    if not isinstance(changes, dict):
        raise click.ClickException("--data must be a JSON object")
    try:
        source, event = sim.build(type_, changes)
    except ValueError as exc:
        raise click.ClickException(one_line(str(exc))) from None
    settings = _settings("PLATFORM_WEBHOOK_SECRET" if source == "platform" else "STRIPE_WEBHOOK_SECRET")
    target = url or f"http://127.0.0.1:{settings.port}"
    try:
        status, answer = sim.send(url=target, source=source, event=event, settings=settings)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # refused, a bad address, not HTTP
        raise click.ClickException(one_line(f"{target} unreachable: {exc}")) from None
    click.echo(json.dumps({"sent": event, "status": status, "answer": answer}, indent=2))
    if not 200 <= status < 300:
        sys.exit(1)


@main.command()
def doctor() -> None:
    """Check this installation: database, Redis, secrets, Stripe key, webhook endpoint, catalog (exit 1 on a fail)."""
    from coursepipe import doctor as checks
    from coursepipe.runtime import handler_table
    from coursepipe.settings import ConfigError, Settings

    # REDIS_URL is left to the redis check, so that a malformed one is its `fail` line among the others'
    env = dict(os.environ)
    redis_url = env.pop("REDIS_URL", None) or None
    try:
        settings = Settings.from_env(env).with_(redis_url=redis_url)
    except ConfigError as exc:
        raise click.ClickException(one_line(str(exc))) from None
    handled = sorted(type_ for source, type_ in handler_table() if source == "stripe")
    results = checks.run_checks(settings, handled)
    for check in results:
        click.echo(check.line())
    failed = [c for c in results if c.status == checks.FAIL]
    click.echo(f"{len(results)} checks: {len(failed)} failed, "
               f"{sum(c.status == checks.WARN for c in results)} warned")
    if failed:
        sys.exit(1)


def _register_subcommands() -> None:
    """Course authoring, re-fulfilment and the scheduler's jobs live in modules of their own."""
    from coursepipe import cli_catalog, cli_fulfilment, cli_jobs, cli_people

    for module in (cli_catalog, cli_fulfilment, cli_jobs, cli_people):
        module.register(main)


_register_subcommands()


if __name__ == "__main__":
    main()
