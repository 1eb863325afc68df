"""Entry module for workers that export metrics: `dramatiq workers.prometheus` (instead of `workers.app`).

Adds Dramatiq's own Prometheus middleware (dramatiq_messages_total, _errors_, _retries_, durations,
in-progress) and serves every worker process's metrics, ours included (coursepipe_events_processed_total,
coursepipe_event_processing_seconds), on http://<dramatiq_prom_host>:<dramatiq_prom_port>/ (default
0.0.0.0:9191). Set PROMETHEUS_MULTIPROC_DIR to the same directory as `dramatiq_prom_db` (and empty it
at deploy) so our counters land in the files that server reads. See docs/runbook.md, "Metrics".
"""
from dramatiq.middleware.prometheus import Prometheus

from coursepipe.logs import configure_logging
from workers.app import broker, runtime  # noqa: F401  (builds the runtime from the environment)

configure_logging()  # JSON lines (the worker's stderr is Dramatiq's pipe to the main process by now)
broker.add_middleware(Prometheus())
