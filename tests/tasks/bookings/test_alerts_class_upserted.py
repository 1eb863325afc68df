"""Low-seat alerts driven by `class.upserted` events through the inbox runner (the platform's path)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from db.enums import InboxSource
from db.models import AlertLog, CourseStepOption, OutboxMessage
from tasks.inbox.store import store_event
from tests.inbox_api import HANDLERS, process_event
from tests import factories
from tests.conftest import make_settings

START = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=5)
BASE = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)


@pytest.fixture(autouse=True)
def _needs_handler():
    if HANDLERS.get(("platform", "class.upserted")) is None:
        pytest.skip("no class.upserted handler registered yet")


def _upsert(database, settings, n: int, seats_taken: int, event_id: str | None = None, capacity: int = 10):
    data = {"class_id": "gc_SFZ_1_0", "title": "Salsa basics", "starts_at": START.isoformat(),
            "ends_at": (START + timedelta(hours=1)).isoformat(), "capacity": capacity, "seats_taken": seats_taken,
            "status": "scheduled"}
    occurred = BASE + timedelta(minutes=n)
    payload = {"id": event_id or f"pev_class_{n}", "type": "class.upserted", "occurred_at": occurred.isoformat(),
               "data": data}
    with database.session_scope() as s:
        stored = store_event(session=s, source=InboxSource.PLATFORM, event_id=payload["id"], type="class.upserted",
                             payload=payload, subject="class:gc_SFZ_1_0", occurred_at=occurred)
    with database.session_scope() as s:
        result = process_event(session=s, inbox_id=stored.id, settings=settings)
    return stored, result


def _alerts(database):
    with database.session_scope() as s:
        alerts = s.scalars(select(AlertLog.details).where(AlertLog.kind == "low_seat")).all()
        mails = s.scalars(select(OutboxMessage.recipient).where(OutboxMessage.topic == "low_seat_alert")).all()
        flag = s.scalar(select(CourseStepOption.low_seat_alerted_at))
    return alerts, mails, flag


def test_class_updates_crossing_staying_recovering_and_crossing_again_alert_twice(database):
    settings = make_settings(database.url, low_seat_threshold=3)
    with database.session_scope() as s:
        factories.program(s, steps=1)
    for n, taken in enumerate((2, 8, 9, 10, 4, 8, 9), start=1):
        _, result = _upsert(database, settings, n, taken)
        assert result.outcome.value == "processed", result.error
    alerts, mails, flag = _alerts(database)
    assert [a["seats_left"] for a in alerts] == [2, 2] and mails == ["@admins", "@admins"]
    assert alerts[0]["step_label"] == "SFZ-1" and alerts[0]["class_title"] == "Salsa basics"
    assert flag is not None


def test_the_same_class_event_twice_alerts_once(database):
    settings = make_settings(database.url, low_seat_threshold=3)
    with database.session_scope() as s:
        factories.program(s, steps=1)
    first, _ = _upsert(database, settings, 1, 9, event_id="pev_same")
    again, result = _upsert(database, settings, 1, 9, event_id="pev_same")
    assert again.duplicate and again.id == first.id and result.outcome.value == "skipped"
    assert len(_alerts(database)[0]) == 1


def test_an_older_update_arriving_late_does_not_clear_the_alert(database):
    settings = make_settings(database.url, low_seat_threshold=3)
    with database.session_scope() as s:
        factories.program(s, steps=1)
    _upsert(database, settings, 5, 9)  # newest: 1 left → alert
    _upsert(database, settings, 1, 2)  # older (8 left) arrives late: stale, ignored
    alerts, _, flag = _alerts(database)
    assert len(alerts) == 1 and flag is not None
    _upsert(database, settings, 6, 9)  # still low: nothing new
    assert len(_alerts(database)[0]) == 1
