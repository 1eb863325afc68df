"""One search for any id across events, enrollments, students and the outbox; pending events with their
age; worker heartbeats."""
from __future__ import annotations

import re
import time
from datetime import timedelta

from sqlalchemy import select, update

from db.enums import BundleKind, InboxStatus
from db.models import InboxEvent, WorkerHeartbeat
from db.types import utcnow
from tests import factories
from tests.admin_support import login_as, make_admin
from tests.tasks.purchases.payments_support import charge_refunded, checkout, deliver, store
from workers import heartbeats


def _sections(html: str) -> dict[str, str]:
    return {name: body for name, body in re.findall(r'<section id="(found-\w+)">(.*?)</section>', html, re.S)}


def test_a_stuck_purchase_is_found_by_any_of_its_ids(client, runtime):
    db = runtime.db
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    deliver(db, checkout(cs="cs_test_lost", pi="pi_lost", student="stu_lost1", course="NOPE"))  # fails: no course
    deliver(db, checkout(cs="cs_test_ok", pi="pi_ok", student="stu_ok1", email="ok@example.test"))
    deliver(db, charge_refunded(pi="pi_ok", charge="ch_found", refunds=(("re_found", 12000),)))
    make_admin(db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")

    for query in ("cs_test_lost", "stu_lost1", "pi_lost"):
        found = _sections(client.get("/admin/ui/find", query_string={"q": query}).get_data(True))
        assert "checkout.session.completed" in found["found-events"] and "failed" in found["found-events"], query
        assert "No enrollments match" in found["found-enrollments"]
    for query in ("ch_found", "re_found"):
        found = _sections(client.get("/admin/ui/find", query_string={"q": query}).get_data(True))
        assert "charge.refunded" in found["found-events"]
        assert "cs_test_ok" in found["found-enrollments"]  # the payment's enrollment, linked
    by_mail = _sections(client.get("/admin/ui/find", query_string={"q": "OK@example.test"}).get_data(True))
    assert "stu_ok1" in by_mail["found-students"] and "cs_test_ok" in by_mail["found-enrollments"]
    assert "enrollment_welcome" in by_mail["found-outbox"]
    nothing = _sections(client.get("/admin/ui/find", query_string={"q": "zz_nothing_like_it"}).get_data(True))
    assert "No events match" in nothing["found-events"] and "No messages match" in nothing["found-outbox"]
    for odd in ("²", "9" * 30, "1" + "0" * 19):  # a digit int() refuses; numbers no BIGINT holds
        page = client.get("/admin/ui/find", query_string={"q": odd})
        assert page.status_code == 200 and "No events match" in _sections(page.get_data(True))["found-events"], odd
    assert 'action="/admin/ui/find"' in client.get("/admin/").get_data(True)  # the box on every page


def test_pending_events_with_their_age_and_no_worker_warning(client, runtime):
    db = runtime.db
    inbox_id = store(db, checkout(cs="cs_wait", pi="pi_wait"))
    with db.session_scope() as s:
        s.execute(update(InboxEvent).where(InboxEvent.id == inbox_id)
                  .values(received_at=utcnow() - timedelta(seconds=90)))
        assert s.get(InboxEvent, inbox_id).status is InboxStatus.PENDING
    make_admin(db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")
    html = client.get("/admin/ui/find").get_data(True)
    age = re.search(r'class="num pending-age">(\d+) s<', html)
    assert age and 90 <= int(age.group(1)) < 600
    assert 'id="no-worker"' in html


def test_a_running_worker_beats_and_a_stopped_one_is_forgotten(client, runtime, worker):
    db = runtime.db
    for _ in range(500):  # the first beat is written by the worker's thread as it boots
        with db.session_scope() as s:
            rows = s.scalars(select(WorkerHeartbeat)).all()
        if rows:
            break
        time.sleep(0.01)
    assert len(rows) == 1 and heartbeats.workers(db)[0]["alive"]
    make_admin(db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")
    html = client.get("/admin/ui/find").get_data(True)
    assert 'id="no-worker"' not in html and rows[0].id in html and ">alive<" in html
    with db.session_scope() as s:  # a beat a minute old: presumed dead
        s.execute(update(WorkerHeartbeat).values(beat_at=utcnow() - timedelta(minutes=2)))
    assert not heartbeats.workers(db)[0]["alive"]
    worker.stop()
    assert heartbeats.workers(db) == []
