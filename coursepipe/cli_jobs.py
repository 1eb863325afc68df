"""`coursepipe jobs list` / `coursepipe jobs run NAME`: the scheduler's jobs, and one run now, once."""
from __future__ import annotations

import json

import click

from coursepipe.cli_support import ROW_ID, one_line

DRAIN_TIMEOUT_MS = 120_000


def _drain(broker) -> None:
    """Wait until the in-process broker's queues are empty (a handled message may enqueue more)."""
    for _ in range(5):
        busy = False
        for queue in list(broker.queues):
            if queue.endswith(".DQ") or queue.endswith(".XQ"):
                continue
            if broker.queues[queue].unfinished_tasks:
                busy = True
            broker.join(queue, timeout=DRAIN_TIMEOUT_MS, fail_fast=False)
        if not busy:
            return


def register(main: click.Group) -> None:
    from coursepipe.cli_support import checked_reason, reason_option, record_cli_action
    from coursepipe.cli_support import runtime_for as _runtime
    from coursepipe.cli_support import settings_for as _settings

    @main.group()
    def jobs() -> None:
        """The scheduler's jobs."""

    @jobs.command("list")
    @click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
    def jobs_list(as_json: bool) -> None:
        """Each job, its interval and its last run."""
        from scheduler.service import JOBS
        from workers.job_runs import last_runs

        runtime = _runtime(_settings())
        runs = last_runs(runtime.db)
        for job in JOBS.values():
            last = runs.get(job.name)
            # not finished: still running, or its worker failed (the row says when it was sent, not that it ran)
            finished = last if last is not None and last.finished_at is not None else None
            row = {
                "name": job.name,
                "actor": job.actor,
                "every_seconds": job.seconds,
                "last_run": last.started_at.isoformat() if last else None,
                "last_finished": finished.finished_at.isoformat() if finished else None,
                "last_result": finished.result if finished else None,
                "description": job.description,
            }
            if as_json:
                click.echo(json.dumps(row))
            else:
                done = (" ".join(f"{k}={v}" for k, v in finished.result.items()) or "done") if finished else "-"
                click.echo(f"{job.name:<14} every {job.seconds:>5}s  last {row['last_run'] or '-':<32}  "
                           f"{done:<28}  {job.description}")

    def _audit_run(runtime, name: str, reason: str | None, *, queued: bool) -> None:
        with runtime.db.session_scope() as session:  # the job does its own work; this records who asked for it
            record_cli_action(session, "job.run", f"job:{name}", reason, queued=queued)

    @jobs.command("run")
    @click.argument("name")
    @reason_option
    def jobs_run(name: str, reason: str | None) -> None:
        """Run job NAME now, once, as the scheduler would (in-process with the embedded broker); audited."""
        from scheduler.service import JOBS, NotQueued, run_now
        from workers.job_runs import run_error
        from tasks.messaging import delivery
        from workers.actors import send
        from workers.broker import start_embedded_worker

        if name not in JOBS:
            raise click.ClickException(f"unknown job {name!r}; one of: {', '.join(JOBS)}")
        reason = checked_reason(reason)
        settings = _settings()
        runtime = _runtime(settings)
        if settings.redis_url:
            try:
                run_now(runtime, name)
            except NotQueued as exc:
                _audit_run(runtime, name, reason, queued=False)
                raise click.ClickException(one_line(str(exc))) from None
            _audit_run(runtime, name, reason, queued=True)
            click.echo(f"job {name}: {JOBS[name].actor} queued")
            return
        _audit_run(runtime, name, reason, queued=False)
        # embedded broker: run it here with worker threads, then relay what it queued, so its mail leaves
        worker = start_embedded_worker(runtime.broker, threads=4)
        try:
            run_id = run_now(runtime, name)
            _drain(runtime.broker)
            if name != "relay":
                send("relay_outbox")
                _drain(runtime.broker)
        finally:
            worker.stop()
        failed = run_error(runtime.db, run_id)  # this run's row: its actor finished it, with an error if it raised
        if failed:
            raise click.ClickException(one_line(f"job {name} failed: {failed}"))
        with runtime.db.session_scope() as session:
            counts = delivery.counts(session=session)
        click.echo(f"job {name}: done; outbox {json.dumps(counts, sort_keys=True)}")

    @main.group()
    def outbox() -> None:
        """Outbound mail and platform events: inspect and retry."""

    @outbox.command("list")
    @click.option("--status", type=click.Choice(["pending", "sending", "sent", "dead", "expired", "problems"]),
                  default="problems", show_default=True,
                  help="'problems': dead, or failed at least once and still to send ('expired' ones are not)")
    @click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
    def outbox_list(status: str, limit: int) -> None:
        from sqlalchemy import select

        from db.enums import OutboxStatus
        from db.models import OutboxMessage
        from tasks.messaging import delivery

        runtime = _runtime(_settings())
        with runtime.db.session_scope() as session:
            if status == "problems":
                rows = delivery.problems(session=session, limit=limit)
            else:
                rows = list(session.scalars(select(OutboxMessage).where(OutboxMessage.status == OutboxStatus(status))
                                            .order_by(OutboxMessage.id.desc()).limit(limit)))
            views = [delivery.message_view(m) for m in rows]
        for view in views:
            click.echo(json.dumps(view))

    @outbox.command("retry")
    @click.argument("message_id", type=ROW_ID)
    @reason_option
    def outbox_retry(message_id: int, reason: str | None) -> None:
        """Make a dead (or backing-off) message due now with a fresh attempt count; audited."""
        from tasks.messaging import delivery
        from tasks.errors import TaskError

        reason = checked_reason(reason)
        runtime = _runtime(_settings())
        try:
            with runtime.db.session_scope() as session:
                delivery.retry(session=session, message_id=message_id)
                record_cli_action(session, "outbox.retry", f"outbox_message:{message_id}", reason)
        except TaskError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        click.echo(f"outbox message {message_id} is due again (the relay sends it within seconds)")

    @outbox.command("retry-dead")
    @click.option("--channel", type=click.Choice(["mail", "platform"]), default=None, help="only this channel")
    @reason_option
    def outbox_retry_dead(channel: str | None, reason: str | None) -> None:
        """Make every dead message due now with a fresh attempt count (after fixing the cause); audited.

        A transaction (and an audit entry) per 10,000 messages, oldest first, through the messages dead when it
        starts: one that dies again meanwhile is not taken twice."""
        from db.enums import OutboxChannel
        from tasks.messaging import delivery

        reason = checked_reason(reason)
        runtime = _runtime(_settings())
        only = OutboxChannel(channel) if channel else None
        with runtime.db.session_scope() as session:
            through = delivery.last_dead(session=session, channel=only)
        total, after = 0, None
        while True:
            with runtime.db.session_scope() as session:
                ids = delivery.retry_dead(session=session, channel=only, after=after, through=through) \
                    if through is not None else []
                if ids or not total:
                    record_cli_action(session, "outbox.retry_dead", f"outbox:{channel or 'all'}", reason,
                                      retried=len(ids))
            total += len(ids)
            if not ids:
                break
            after = ids[-1]
        click.echo(f"{total} dead outbox message(s) due again (the relay sends them within seconds)")
