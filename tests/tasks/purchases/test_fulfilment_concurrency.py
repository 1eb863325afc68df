"""30 concurrent redeliveries of one purchase change nothing: threads against the real databases."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
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


# --------------------------------------------------------------------------- a comp while the purchase is applied


@pytest.mark.parametrize("path", ["general", "fast"])
def test_a_comp_made_while_the_students_purchase_of_the_course_is_applied_is_refused(pg_database, path):
    """Before: the purchase held its buyer under a key-share lock, which the comp's ledger lock does not wait for;
    the comp could not see the purchase's enrollment, not yet committed, and made its own: two active
    enrollments, the bundle granted twice. Applied one after the other, the comp is refused already_enrolled."""
    from tasks.enrollments import services as enrollments
    from tasks.inbox.context import HandlerContext
    from tasks.ledger import credits
    from tasks.purchases import fast_purchase, manual
    from tests.conftest import while_held
    from tests.tasks.purchases.payments_support import checkout, store

    database = pg_database
    with database.session_scope() as s:
        factories.program(s, code="SFZ", steps=2)
        factories.student(s, id="stu_1")
    event = checkout(cs="cs_1", pi="pi_1", student="stu_1")
    inbox_id = store(database, event)
    applied, release = threading.Event(), threading.Event()

    def purchase():
        with database.session_scope() as s:
            if path == "fast":
                assert fast_purchase.process(HandlerContext(session=s), inbox_id) is not None
            else:
                fulfilment.fulfil_checkout(session=s, checkout=event["data"]["object"])
            applied.set()
            assert release.wait(30)

    def comp():
        with database.session_scope() as s:
            return manual.enroll(session=s, student_id="stu_1", course_code="SFZ", grant_bundle=True,
                                 cause="admin:9", reason="comp", actor="op@studio.test")

    _, comped, waited = while_held(database, purchase, comp, held=applied, release=release)
    assert waited and isinstance(comped.exception(), enrollments.AlreadyEnrolled)
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(StudentCourseEnrollment)) == 1
        assert credits.balances(session=s, student_id="stu_1")["private"] == 2
