"""Worker liveness: each worker process writes a heartbeat row (`worker_heartbeat`, id `host:pid`) when
it boots and every HEARTBEAT_SECONDS after, and deletes it when it shuts down cleanly. The dashboard
lists them with their age: a worker whose beat is older than STALE_AFTER is presumed dead (a row left
by a killed process ages out and is dropped after FORGET_AFTER)."""
from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta
from typing import Any, Callable

import dramatiq
from sqlalchemy import delete, select

from db.models import WorkerHeartbeat
from db.types import utcnow

log = logging.getLogger("coursepipe.heartbeats")

HEARTBEAT_SECONDS = 15
STALE_AFTER = timedelta(seconds=60)
FORGET_AFTER = timedelta(days=1)


def beat(db, worker_id: str, *, started_at: datetime, now: datetime | None = None) -> None:
    now = now or utcnow()
    with db.session_scope() as session:
        session.merge(WorkerHeartbeat(id=worker_id, started_at=started_at, beat_at=now))
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.beat_at < now - FORGET_AFTER))


def forget(db, worker_id: str) -> None:
    with db.session_scope() as session:
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == worker_id))


def workers(db, *, now: datetime | None = None) -> list[dict[str, Any]]:
    now = now or utcnow()
    with db.session_scope() as session:
        rows = session.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.id)).all()
        return [{"id": r.id, "started_at": r.started_at, "beat_at": r.beat_at,
                 "age_seconds": max((now - r.beat_at).total_seconds(), 0.0),
                 "alive": now - r.beat_at <= STALE_AFTER} for r in rows]


class Heartbeats(dramatiq.Middleware):
    """Beats from a daemon thread of each worker process (`database` gives the runtime's database)."""

    def __init__(self, database: Callable[[], Any], *, seconds: float = HEARTBEAT_SECONDS) -> None:
        self.database, self.seconds = database, seconds
        self._stop = threading.Event()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def after_worker_boot(self, broker, worker):
        self._stop.clear()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{id(worker) & 0xffff:x}"
        started = utcnow()

        def run():
            while True:
                try:
                    beat(self.database(), self.worker_id, started_at=started)
                except Exception:  # the database is down: the dashboard shows the beat ageing
                    log.warning("worker heartbeat not written", exc_info=True)
                if self._stop.wait(self.seconds):
                    return

        self._thread = threading.Thread(target=run, name="heartbeat", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None:
            thread.join(timeout=10)  # a beat in flight lands before the row is removed
        try:
            forget(self.database(), self.worker_id)
        except Exception:
            log.warning("worker heartbeat not removed", exc_info=True)
