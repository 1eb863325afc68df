"""Actors run by the scheduler's jobs (declared on the broker by the composition root).

Each is thin: open a unit of work, call one `tasks/` function, send follow-up messages after commit.
Delivery is the exception, on purpose: claim (one unit of work) → network call (none) → outcome (one
unit of work per message), so no SMTP or HTTP call ever runs inside a transaction.
"""
from __future__ import annotations

import logging
import time

from db.enums import OutboxChannel
from db.types import utcnow
from tasks.bookings import alerts
from tasks.catalog import services as catalog
from tasks.enrollments import reminders
from tasks.errors import PermanentError
from tasks.lifecycle import retention
from tasks.messaging import delivery
from tasks.purchases import selling
from workers import job_runs, metrics, publishing, reconciling, refunds, runtime
from workers.actors import actor, enqueue_inbox, finish_job_run, records_failure, send
from workers.queue_depths import messages_held
from workers.queues import CATALOG_QUEUE, JOBS_QUEUE, OUTBOX_QUEUE

log = logging.getLogger("coursepipe.jobs")

RELAY_CONCURRENCY = 8  # relays a backlog of outbox messages is drained by at once, at most



@actor(queue_name=OUTBOX_QUEUE, max_retries=0)
@records_failure
def relay_outbox(job_run: int | None = None, batch: int | None = None, channel: str | None = None) -> None:
    """Claim a batch of due outbox rows, up to `batch` of each channel (of `channel` alone, if given), in one
    transaction; send each on kept-open connections, platform events first; record the outcomes (one
    transaction). A batch still running RECORD_AFTER_SECONDS after its claim (a slow receiver) records what
    it sent before each further message, so a sent message waits unrecorded no longer than the one send
    that follows it; from RENEW_AFTER_SECONDS on, the next message's lease is renewed before it is sent,
    and a batch that turned slow with more than CLAIM_BATCH messages to go hands all but those back
    (`delivery.hand_back`). `batch`: the size a previous relay chose (`delivery.next_batch`); the
    scheduler's ticks start at CLAIM_BATCH.

    A full share of platform events starts a relay of platform events alone as soon as it has gone out,
    before this batch's mail: the platform's events drain at their own pace, not at the mail server's."""
    rt = runtime.current()
    size = delivery.batch_size(batch)
    only = _channel(channel)
    with rt.db.session_scope() as session:
        jobs = delivery.claim_due(session=session, settings=rt.settings, limit=size, channel=only)
    claimed_at = time.monotonic()
    shares = {c: sum(job.channel is c for job in jobs) for c in OutboxChannel}
    delivered_by = dict.fromkeys(OutboxChannel, 0)
    results: list = []
    chained: set[OutboxChannel] = set()  # channels a relay of their own was started for
    handed: set[OutboxChannel] = set()  # channels with messages handed back unsent
    handed_back = 0
    platform_first = only is None and shares[OutboxChannel.PLATFORM] == size  # to pass on before the mail

    def record() -> None:
        if not results:
            return
        with rt.db.session_scope() as session:
            statuses = delivery.record_all(session=session, results=results)
        for (job, _), status in zip(results, statuses):
            metrics.outbox_attempt(job.channel.value, status and status.value)
        results.clear()

    def follow(channel: OutboxChannel | None, claimed: int, ok: int) -> None:
        """The next relay of a full share (and one more while fewer than RELAY_CONCURRENCY are held). The
        default size and a mixed relay go unmarked: a worker of an older version runs that message too."""
        following = delivery.next_batch(size, claimed=claimed, delivered=ok, seconds=time.monotonic() - claimed_at)
        marked = {"batch": following} if following != delivery.CLAIM_BATCH else {}
        if channel is not None:
            marked["channel"] = channel.value
        send("relay_outbox", **marked)
        held = messages_held(rt.broker, OUTBOX_QUEUE)  # None: the broker cannot tell, so none is added
        if held is not None and held < RELAY_CONCURRENCY:
            send("relay_outbox", **marked)

    with delivery.Sender(rt.settings) as sender:
        unsent = list(jobs)
        while unsent:
            job = unsent.pop(0)
            if platform_first and job.channel is OutboxChannel.MAIL:
                # the platform's full share went out: record it and let the next share go without the mail
                platform_first = False
                record()
                if delivered_by[OutboxChannel.PLATFORM]:
                    follow(OutboxChannel.PLATFORM, size, delivered_by[OutboxChannel.PLATFORM])
                    chained.add(OutboxChannel.PLATFORM)
            age = time.monotonic() - claimed_at
            if age > delivery.RECORD_AFTER_SECONDS:
                record()
                if len(unsent) >= delivery.CLAIM_BATCH:
                    # a slow batch: keep as many as a small one holds, hand the rest back to other relays
                    tail = unsent[delivery.CLAIM_BATCH - 1:]
                    del unsent[delivery.CLAIM_BATCH - 1:]
                    with rt.db.session_scope() as session:
                        handed_back += delivery.hand_back(session=session, jobs=tail)
                    handed |= {tailed.channel for tailed in tail}
            if age > delivery.RENEW_AFTER_SECONDS:
                with rt.db.session_scope() as session:  # heartbeat: the lease covers the send about to start
                    if not delivery.renew_lease(session=session, job=job):
                        continue  # our lease ran out; the row is back in the queue
            outcome = sender.send(job)  # outside any transaction
            results.append((job, outcome))
            delivered_by[job.channel] += outcome.ok
    record()
    delivered = sum(delivered_by.values())
    if delivered_by[OutboxChannel.PLATFORM] and OutboxChannel.PLATFORM not in chained:
        # an enrollment's next event waits for the one before it to be sent: its turn has come now
        sent_for = {job.enrollment_id for job in jobs
                    if job.channel is OutboxChannel.PLATFORM and job.enrollment_id is not None}
        with rt.db.session_scope() as session:
            turn_came = delivery.next_in_turn(session=session, enrollment_ids=sent_for)
        if turn_came:
            send("relay_outbox", channel=OutboxChannel.PLATFORM.value)
            chained.add(OutboxChannel.PLATFORM)
    # a backlog and the far side up (a full share, some of it delivered), or messages handed back: keep
    # draining without waiting for the tick
    following = ({c for c, n in shares.items() if n == size and delivered_by[c]} | handed) - chained
    if following and only is None and not chained:
        follow(None, len(jobs), delivered)
    else:
        for c in following:
            follow(c, shares[c], delivered_by[c])
    finish_job_run(job_run, claimed=len(jobs), delivered=delivered, handed_back=handed_back)


def _channel(name: str | None) -> OutboxChannel | None:
    """The channel a relay was started for. Only relays send one; a name this version does not know (a newer
    worker's) relays every channel rather than dropping the message."""
    if not name:
        return None
    try:
        return OutboxChannel(name)
    except ValueError:
        log.warning("relay_outbox: unknown channel %r; relaying every channel", name)
        return None


# Retries are the outbox's own (next_attempt_at with backoff, then `dead`), not Dramatiq's.
@actor(queue_name=OUTBOX_QUEUE, max_retries=0)
def deliver_outbox_message(message_id: int) -> None:
    rt = runtime.current()
    with rt.db.session_scope() as session:
        job = delivery.claim(session=session, message_id=message_id, settings=rt.settings)
    if job is None:
        return  # not due, held, or another worker has it
    outcome = delivery.transmit(job, settings=rt.settings)  # outside any transaction
    with rt.db.session_scope() as session:
        status = delivery.record(session=session, job=job, outcome=outcome)
    metrics.outbox_attempt(job.channel.value, status and status.value)
    log.debug("outbox %s attempt %d: %s", message_id, job.attempts, status)


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def low_seat_scan(job_run: int | None = None) -> None:
    rt = runtime.current()
    with rt.db.session_scope() as session:
        raised = alerts.check_low_seats(session=session, class_id=None, threshold=rt.settings.low_seat_threshold)
    if raised:
        send("relay_outbox")
    finish_job_run(job_run, alerts_raised=raised)


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def send_reminders(job_run: int | None = None) -> None:
    rt = runtime.current()
    sent = reminders.send_reminders(unit_of_work=rt.db.session_scope, settings=rt.settings)
    if sent:
        send("relay_outbox")
    finish_job_run(job_run, reminders_queued=sent)


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def reconcile(lookback_hours: int | None = None, job_run: int | None = None, max_calls: int | None = None) -> None:
    """Ask Stripe for the handled events of the last 30 days (network, no transaction), store the ones the
    inbox lacks as the webhook would have, and send them to the workers."""
    rt = runtime.current()
    finish_job_run(job_run, **reconciling.run(rt, lookback_hours=lookback_hours, max_calls=max_calls,
                                               enqueue=enqueue_inbox))


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def provide_new_steps(job_run: int | None = None) -> None:
    """Give a step added in the last minutes to the enrollments a purchase fulfilled meanwhile left without it
    (`catalog.provide_added_steps`)."""
    rt = runtime.current()
    # back to the last run that ran to its end: the steps added while no run did (workers or scheduler down) too;
    # without one on record (a first run, or runs pruned after 3 days down), as far back as runs are kept
    last, _ = job_runs.last_result(rt.db, "new-steps")
    covered_at = last.started_at if last is not None else utcnow() - job_runs.JOB_RUN_RETENTION
    with rt.db.session_scope() as session:
        written = catalog.provide_added_steps(session, covered_at=covered_at)
    if written:
        log.warning("new-steps: %d enrollment step(s) a purchase fulfilled during a step's addition had missed",
                    written)
    finish_job_run(job_run, provided=written)


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def settle_refunds(job_run: int | None = None) -> None:
    """Finish the admin refunds left pending (their request died, or nobody retried it): ask Stripe for the
    refund made for each, make it only if there is none, record the outcome (`refunds.settle_pending`)."""
    rt = runtime.current()
    finish_job_run(job_run, **refunds.settle_pending(unit_of_work=rt.db.session_scope, settings=rt.settings))


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def resume_publishing(job_run: int | None = None) -> None:
    """Send the publish again of the courses and packages whose Stripe calls stopped pending (the publish's worker
    lost with its message, its retries spent): `publishing.resume_stalled`."""
    rt = runtime.current()
    finish_job_run(job_run, resumed=publishing.resume_stalled(unit_of_work=rt.db.session_scope, settings=rt.settings,
                                                              send=send))


@actor(queue_name=JOBS_QUEUE, max_retries=0)
@records_failure
def prune_retention(job_run: int | None = None) -> None:
    """Prune raw payloads, mail bodies and ended messages' delivery moves older than RETENTION_DAYS, and the
    payloads of ended events about erased students, one batch per unit of work."""
    rt = runtime.current()
    total = retention.Pruned()
    while True:
        with rt.db.session_scope() as session:
            done = retention.prune(session=session, retention_days=rt.settings.retention_days)
        total.add(done)
        if not done.full():
            break
    if any(total.as_dict().values()):
        log.info("retention: pruned %d event payload(s), %d mail body(ies) and %d delivery move(s) older than %d days, "
                 "and %d payload(s) of events about erased students", total.events, total.mails, total.transitions,
                 rt.settings.retention_days, total.erased)
    with rt.db.session_scope() as session:  # checkout Idempotency-Keys past the day they stay bound
        keys = selling.prune_keys(session)
    finish_job_run(job_run, **total.as_dict(), checkout_keys_pruned=keys)


# PermanentError (Stripe refused, no API key, unknown course) is not retried; a PublishRetry is, and
# the retry replays the pending intent with its Idempotency-Key, so nothing is created twice.
@actor(queue_name=CATALOG_QUEUE, max_retries=10, throws=(PermanentError,))
def publish_listing(kind: str, code: str) -> None:
    """Bring a course's (or package's) Stripe product and price in line, then mark it published."""
    rt = runtime.current()
    result = publishing.publish(kind, code, unit_of_work=rt.db.session_scope, settings=rt.settings)
    enqueue_inbox(result.woken)
    log.info("published %s %s: %d Stripe call(s), product %s, price %s", kind, code, len(result.calls),
             result.product_id, result.price_id)
