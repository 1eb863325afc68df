"""30 concurrent redeliveries of one purchase change nothing: threads against the real databases."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from db.enums import BundleKind, InboxStatus
from db.models import (
    CreditLedgerEntry,
    InboxEvent,
    OutboxMessage,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)
from tests import inbox_api as inbox
from tasks.purchases import fulfilment
from tests import factories
from tests.conftest import drain
from tests.signing import stripe_headers
from tests.tasks.purchases.payments_support import checkout, run, state, store

N = 30


def _catalog(database):
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2), (BundleKind.GROUP_CREDIT, 1)))


def _counts(database) -> dict:
    with database.session_scope() as s:
        return {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                for model in (Student, StudentCourseEnrollment, StudentCourseProgress, CreditLedgerEntry,
                              OutboxMessage)}


EXPECTED = {"student": 1, "student_course_enrollment": 1, "student_course_progress": 3, "credit_ledger_entry": 2,
            "outbox_message": 2}


def _together(fn, n=N):
    barrier = threading.Barrier(n)

    def go(i):
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(go, range(n)))


def test_thirty_concurrent_fulfilments_of_one_session_create_it_once(database):
    _catalog(database)
    obj = checkout(cs="cs_race", pi="pi_race")["data"]["object"]

    def fulfil(_):
        with database.session_scope() as s:
            return fulfilment.fulfil_checkout(session=s, checkout=obj).created

    created = _together(fulfil)
    assert created.count(True) == 1
    assert _counts(database) == EXPECTED
    assert state(database)["balances"] == {"group": 1, "private": 2}


def test_thirty_concurrent_events_for_one_session_through_the_runner(database):
    _catalog(database)
    ids = [store(database, checkout(cs="cs_race", pi="pi_race")) for _ in range(N)]  # distinct event ids
    outcomes = _together(lambda i: run(database, ids[i]).outcome)
    assert set(outcomes) == {inbox.Outcome.PROCESSED}
    assert _counts(database) == EXPECTED


def test_thirty_concurrent_redeliveries_over_http(database, client, runtime, worker):
    _catalog(database)
    body = json.dumps(checkout(cs="cs_http", pi="pi_http"))

    def post(_):
        response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
        return response.status_code, response.get_json()["duplicate"]

    answers = _together(post)
    assert {status for status, _ in answers} == {200}
    assert [dup for _, dup in answers].count(False) == 1
    drain(runtime)
    with database.session_scope() as s:
        rows = s.scalars(select(InboxEvent)).all()
        assert len(rows) == 1 and rows[0].status == InboxStatus.PROCESSED
    assert _counts(database) == EXPECTED
