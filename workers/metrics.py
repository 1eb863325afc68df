"""Prometheus metrics and the one log line per processed event.

Counters and the latency histogram live in prometheus_client's default registry, created on first
use (not at import): prometheus_client picks its multi-process mode from PROMETHEUS_MULTIPROC_DIR
when it is first imported, and Dramatiq's Prometheus middleware sets that variable at worker boot,
so nothing here may import prometheus_client before then.

Backlogs (inbox and outbox rows in an open status) are not counted in the process: they are read
from the database at scrape time (`DatabaseCollector`, index ranges whose cost follows the backlog,
not the history), so every process reports the same truth.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from datetime import datetime
from types import SimpleNamespace

from workers import runtime

log = logging.getLogger("coursepipe.events")

# receipt → commit: from a few milliseconds (hot path) to minutes (retries, parked events)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)

_lock = threading.Lock()
_metrics: SimpleNamespace | None = None


def _never_raises(fn):
    """Counting must never break what it counts (a webhook, a runner pass): failures are logged, once."""
    failed = []

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not failed:
                failed.append(True)
                logging.getLogger("coursepipe.metrics").error("metrics: %s failed: %s", fn.__name__, exc)
            return None

    return wrapped


def _m() -> SimpleNamespace:
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
                if multiproc_dir:  # multi-process mode writes one file per process there
                    os.makedirs(multiproc_dir, exist_ok=True)
                from prometheus_client import Counter, Histogram

                _metrics = SimpleNamespace(
                    received=Counter("coursepipe_events_received", "Verified events stored for the first time.",
                                     ["source", "type"]),
                    duplicate=Counter("coursepipe_events_duplicate", "Verified redeliveries of an event already stored.",
                                      ["source", "type"]),
                    rejected=Counter("coursepipe_events_rejected", "Webhook requests refused (nothing stored).",
                                     ["source", "reason"]),
                    processed=Counter("coursepipe_events_processed",
                                      "Runs of the inbox runner by outcome (retry = a transient failure, "
                                      "failed = retries exhausted or permanent).", ["source", "type", "outcome"]),
                    deliveries=Counter("coursepipe_outbox_deliveries",
                                       "Outbox send attempts by outcome: sent, retry (backing off), dead, "
                                       "expired (held up past its expiry: not sent, not a failure).",
                                       ["channel", "result"]),
                    fallbacks=Counter("coursepipe_fast_path_fallbacks",
                                      "Marked purchases the fast path gave to the general path after the "
                                      "database refused it, by error class.", ["error"]),
                    recovered=Counter("coursepipe_reconcile_recovered",
                                      "Stripe events the reconcile job stored that no webhook had delivered, "
                                      "by type.", ["type"]),
                    latency=Histogram("coursepipe_event_processing_seconds",
                                      "From receipt (inbox received_at) to the commit of its effects.",
                                      ["source", "type"], buckets=LATENCY_BUCKETS),
                )
    return _metrics


# --------------------------------------------------------------------------- ingress

OTHER_TYPE = "other"


def type_label(source: str, type_: str) -> str:
    """The type as a label: one we handle, or "other" (a signed sender's free text must not mint series)."""
    try:
        handled = (source, type_) in runtime.current().handlers
    except RuntimeError:  # no runtime in this process: nothing is known to be handled
        handled = False
    return type_ if handled else OTHER_TYPE


@_never_raises
def event_received(source: str, type_: str, duplicate: bool) -> None:
    (_m().duplicate if duplicate else _m().received).labels(source, type_label(source, type_)).inc()


@_never_raises
def event_rejected(source: str, reason: str) -> None:
    # by reason, not by type: the type of a request that failed verification is not to be trusted
    _m().rejected.labels(source, reason).inc()


# --------------------------------------------------------------------------- runner


@_never_raises
def event_processed(
    *, inbox_id: int, source: str, event_id: str, type_: str, subject: str | None, outcome: str,
    received_at: datetime | None, committed_at: datetime, error: str | None = None,
) -> None:
    """After the runner's commit: one JSON log line, the outcome counter, the latency histogram."""
    latency = (committed_at - received_at).total_seconds() if received_at is not None else None
    m = _m()
    label = type_label(source, type_)
    m.processed.labels(source, label, outcome).inc()
    if latency is not None and outcome in ("processed", "ignored"):
        m.latency.labels(source, label).observe(max(latency, 0.0))
    level = logging.WARNING if outcome in ("failed", "retry") else logging.INFO
    log.log(level, "event processed", extra={"event": {
        "inbox_id": inbox_id, "source": source, "event_id": event_id, "type": type_, "subject": subject,
        "outcome": outcome, "latency_ms": round(latency * 1000, 1) if latency is not None else None,
        "error": error,
    }})


@_never_raises
def fast_path_fallback(error: str) -> None:
    _m().fallbacks.labels(error).inc()


@_never_raises
def reconcile_recovered(by_type: dict[str, int]) -> None:
    for type_, n in by_type.items():
        _m().recovered.labels(type_).inc(n)


# --------------------------------------------------------------------------- outbox relay


DELIVERY_RESULTS = {"sent": "sent", "pending": "retry", "dead": "dead", "expired": "expired"}


@_never_raises
def outbox_attempt(channel: str, status: str | None) -> None:
    """After the relay recorded one attempt: the row's new status says how it went."""
    _m().deliveries.labels(channel, DELIVERY_RESULTS.get(status or "", "lost")).inc()


# --------------------------------------------------------------------------- scrape time


class DatabaseCollector:
    """Backlog gauges read from the database when /metrics is scraped."""

    def __init__(self, database) -> None:
        self.database = database

    def describe(self):
        return []  # nothing known before a scrape; keeps registration free of queries

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        from tasks.reporting import ops

        up = GaugeMetricFamily("coursepipe_metrics_database_up", "1 if the backlog queries below succeeded.")
        try:
            with self.database.session_scope() as session:
                inbox = ops.inbox_summary(session=session)
                outbox = ops.outbox_summary(session=session)
                retrying = ops.outbox_retrying(session=session)
        except Exception as exc:  # a scrape must still answer when the database does not
            log.warning("metrics: backlog queries failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_status = GaugeMetricFamily("coursepipe_inbox_events",
                                      "Inbox events in an open status (pending, processing, waiting, failed).",
                                      labels=["status"])
        for status, n in sorted(inbox.by_status.items()):
            by_status.add_metric([status], n)
        yield by_status
        age = GaugeMetricFamily("coursepipe_inbox_oldest_pending_age_seconds",
                                "Age of the oldest pending/processing inbox event (0 when none).")
        age.add_metric([], inbox.oldest_pending_age_seconds or 0.0)
        yield age
        messages = GaugeMetricFamily("coursepipe_outbox_messages",
                                     "Outbox messages (mail, platform callbacks) pending, sending or dead.",
                                     labels=["channel", "status"])
        for channel, statuses in sorted(outbox.items()):
            for status, n in sorted(statuses.items()):
                messages.add_metric([channel, status], n)
        yield messages
        backing_off = GaugeMetricFamily("coursepipe_outbox_retrying_messages",
                                        "Pending outbox messages that failed at least once (backing off).",
                                        labels=["channel"])
        for channel, n in sorted(retrying.items()):
            backing_off.add_metric([channel], n)
        yield backing_off


class ProcessCollector:
    """This process's own counters (the default registry), for a registry built per scrape."""

    def collect(self):
        from prometheus_client import REGISTRY

        _m()  # so the families exist (at zero) before the first event
        yield from REGISTRY.collect()


def exposition(database) -> tuple[bytes, str]:
    """The /metrics body: this process's (or, in multi-process mode, every process's) counters + backlogs."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        _m()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(ProcessCollector())
    registry.register(DatabaseCollector(database))
    return generate_latest(registry), CONTENT_TYPE_LATEST
