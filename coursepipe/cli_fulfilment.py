"""`coursepipe refulfill (--enrollment ID | --checkout-session cs_…)`: admin re-fulfilment, idempotent."""
from __future__ import annotations

import json

import click

from coursepipe.cli_support import ROW_ID, one_line


def register(main: click.Group) -> None:
    from coursepipe.cli_support import checked_reason, reason_option, record_cli_action
    from coursepipe.cli_support import runtime_for as _runtime
    from coursepipe.cli_support import settings_for as _settings

    @main.command()
    @click.option("--enrollment", "enrollment_id", type=ROW_ID, help="enrollment id")
    @click.option("--checkout-session", "checkout_session_id", help="Stripe Checkout Session id (cs_…)")
    @reason_option
    def refulfill(enrollment_id: int | None, checkout_session_id: str | None, reason: str | None) -> None:
        """Re-run fulfilment: create only what is missing (steps added later, lost credits), never double.
        Audited as `enrollment.refulfill` (or `checkout.refulfill` by session id)."""
        from tasks.errors import TaskError
        from tasks.purchases import fulfilment
        from workers import inbox_runs

        if (enrollment_id is None) == (checkout_session_id is None):
            raise click.UsageError("give exactly one of --enrollment or --checkout-session")
        reason = checked_reason(reason)
        settings = _settings()
        runtime = _runtime(settings)

        def work(ctx):  # the audit entry in the fulfilment's own transaction: a rolled-back attempt leaves none
            if enrollment_id is not None:
                done = fulfilment.refulfill(session=ctx.session, enrollment_id=enrollment_id).as_dict()
                record_cli_action(ctx.session, "enrollment.refulfill", f"enrollment:{enrollment_id}", reason,
                                  created=_created(done))
                return done
            # a checkout without metadata may need its line items from Stripe: fetched between attempts
            done = fulfilment.refulfill_checkout_session(ctx=ctx, checkout_session_id=checkout_session_id).as_dict()
            course = done["kind"] == "course" and done["id"] is not None
            target = f"enrollment:{done['id']}" if course else f"checkout:{checkout_session_id}"
            record_cli_action(ctx.session, "enrollment.refulfill" if course else "checkout.refulfill",
                              target, reason, checkout_session_id=checkout_session_id, kind=done["kind"],
                              created=_created(done))
            return done

        try:
            result = inbox_runs.with_remote(runtime.db.session_scope, work, settings=settings)
        except TaskError as exc:
            raise click.ClickException(one_line(str(exc))) from None
        woken = result.get("woken_events") or []
        if woken and settings.redis_url:
            from workers.actors import enqueue_inbox

            enqueue_inbox(woken)
        else:  # embedded: run what was waiting for this purchase now, in-process
            for inbox_id in woken:
                inbox_runs.run_event(unit_of_work=runtime.db.session_scope, inbox_id=inbox_id,
                                     handlers=runtime.handlers, settings=settings)
        click.echo(json.dumps(result))


def _created(done: dict) -> dict:
    """What a re-fulfilment created (the non-empty counts), for the audit entry."""
    skip = ("enrollment_id", "status", "checkout_session_id", "kind", "id", "woken_events")
    return {k: v for k, v in done.items() if k not in skip and v}
