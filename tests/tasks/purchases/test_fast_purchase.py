"""The purchase fast path (`tasks.purchases.fast_purchase`) writes exactly what the general path writes.

Each history is run three times on a fresh PostgreSQL database — as the worker runs an unmarked
message (fast path inside the runner's session), as it runs a message the ingress marked as a
purchase (`workers.inbox_runs.run_fast_purchase`, no ORM session), and with `fast=False` (the ORM path, the
specification) — and every row of every table the purchase touches is compared, timestamps aside.
"""
from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from db.database import Database
from db.enums import BundleKind, InboxStatus
from db.models import CourseStep
from db.types import utcnow
from tasks.inbox.context import HandlerContext, lock_key
from tests import inbox_api as inbox
from workers import inbox_runs
from tasks.purchases import fast_purchase
from tests import factories
from tests.conftest import _truncate
from tests.tasks.purchases.payments_support import checkout, deliver, refund_created, store

pytestmark = pytest.mark.postgres

TABLES = ["student", "student_course_enrollment", "student_course_progress", "credit_ledger_entry",
          "outbox_message", "transition_log", "inbox_event", "payment_refund", "erased_subject"]


def _catalog(database):
    with database.session_scope() as s:
        program = factories.program(s, steps=4, bundle=((BundleKind.PRIVATE_CREDIT, 2), (BundleKind.GROUP_CREDIT, 1),
                                                        (BundleKind.PRIVATE_CREDIT, 1)))
        program.stripe_price_id = "price_sfznow"
        step = s.scalar(sa.select(CourseStep).where(CourseStep.program_id == program.id, CourseStep.position == 2))
        step.deleted_at = utcnow()  # a removed step is not provisioned
        factories.student(s, id="stu_known", email="stored@example.test", name="Stored Name")
        factories.student(s, id="stu_erased", email=None, name=None).erased_at = utcnow()
        factories.program(s, code="OTHER", steps=2, bundle=())
        # YOGA (id 3) sold, then deleted, and another YOGA (id 4) made under its code
        factories.program(s, code="YOGA", steps=2, bundle=((BundleKind.GROUP_CREDIT, 1),)).deleted_at = utcnow()
        factories.program(s, code="YOGA", steps=3, bundle=((BundleKind.PRIVATE_CREDIT, 4),))


def _normal(value):
    if isinstance(value, datetime):
        return "<time>"
    if isinstance(value, dict):
        # times of processing written into payloads: a purchase's record, and a revocation's step moves
        # (and a deleted course's time of deletion, in the studio's alert: the catalog is made again per history)
        processed = {"recorded_at", "deleted_at"} | ({"at"} if value.get("status") == "cancelled" else set())
        return {k: ("<time>" if k in processed else _normal(v)) for k, v in value.items()}
    if isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return "<random public id>"
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _snapshot(database) -> dict:
    out = {}
    with database.engine.connect() as conn:
        for table in TABLES:
            rows = conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1")).mappings().all()
            out[table] = [{k: _normal(v) for k, v in row.items()} for row in rows]
    return out


def _history(database, events, fast: bool, marked: bool = False) -> tuple[dict, list]:
    _truncate(database)
    _catalog(database)
    outcomes = [deliver(database, event, fast=fast, marked=marked).outcome for event in events]
    return _snapshot(database), outcomes


HISTORIES = {
    "new buyer": [checkout(cs="cs_1", pi="pi_1", student="stu_new", event_id="evt_1")],
    "known buyer (mail to the stored address)": [checkout(cs="cs_1", pi="pi_1", student="stu_known",
                                                          email="other@example.test", event_id="evt_1")],
    "a buyer erased before the checkout was applied (no e-mail recorded)": [
        checkout(cs="cs_1", pi="pi_1", student="stu_erased", email="ada@example.test", event_id="evt_1")],
    "the course's current price named": [checkout(
        cs="cs_1", pi="pi_1", event_id="evt_1", metadata={"kind": "course", "course_code": "SFZ",
                                                          "coursepipe_price_id": "price_sfznow"})],
    "a price not the course's: its current price recorded": [checkout(
        cs="cs_1", pi="pi_1", event_id="evt_1", metadata={"kind": "course", "course_code": "SFZ",
                                                          "coursepipe_price_id": "price_other"})],
    "buyer without e-mail": [checkout(cs="cs_1", pi="pi_1", student="stu_new", email=None, event_id="evt_1")],
    "course without bundle": [checkout(cs="cs_1", pi="pi_1", course="OTHER", event_id="evt_1")],
    "two purchases, one buyer": [checkout(cs="cs_1", pi="pi_1", event_id="evt_1"),
                                 checkout(cs="cs_2", pi="pi_2", event_id="evt_2")],
    "refund parked before the purchase": [refund_created(refund_id="re_1", pi="pi_1", event_id="evt_r"),
                                          checkout(cs="cs_1", pi="pi_1", event_id="evt_1")],
    "redelivery under a new event id": [checkout(cs="cs_1", pi="pi_1", event_id="evt_1"),
                                        checkout(cs="cs_1", pi="pi_1", event_id="evt_1b")],
    "unknown course": [checkout(cs="cs_1", pi="pi_1", course="NOPE", event_id="evt_1")],
    "a course deleted, its code used again: the one sold": [checkout(
        cs="cs_1", pi="pi_1", event_id="evt_1", metadata={"kind": "course", "course_code": "YOGA", "coursepipe_course_id": "3"})],
    "a malformed course id: the code decides": [checkout(
        cs="cs_1", pi="pi_1", event_id="evt_1", metadata={"kind": "course", "course_code": "YOGA", "coursepipe_course_id": "3x"})],
    "a course id of another code": [checkout(
        cs="cs_1", pi="pi_1", event_id="evt_1", metadata={"kind": "course", "course_code": "YOGA", "coursepipe_course_id": "1"})],
    "unpaid, then paid": [checkout(cs="cs_1", pi="pi_1", payment_status="unpaid", event_id="evt_1"),
                          checkout(cs="cs_1", pi="pi_1", type_="checkout.session.async_payment_succeeded",
                                   event_id="evt_2")],
}


@pytest.mark.parametrize("name", list(HISTORIES))
def test_fast_path_writes_what_the_general_path_writes(pg_database, name):
    events = HISTORIES[name]
    fast, fast_outcomes = _history(pg_database, events, fast=True)
    marked, marked_outcomes = _history(pg_database, events, fast=True, marked=True)
    general, general_outcomes = _history(pg_database, events, fast=False)
    assert fast_outcomes == marked_outcomes == general_outcomes
    for table in TABLES:
        assert fast[table] == general[table], table
        assert marked[table] == general[table], table
    assert fast["inbox_event"], "the history stored its events"


def _assert_fulfilled(database, inbox_id):
    with database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM inbox_event WHERE id = :i"), {"i": inbox_id}).scalar() \
            == InboxStatus.PROCESSED.value
        assert conn.execute(sa.text("SELECT count(*) FROM student_course_progress")).scalar() == 3


def test_a_new_paid_purchase_takes_the_fast_path(pg_database):
    _catalog(pg_database)
    inbox_id = store(pg_database, checkout(cs="cs_1", pi="pi_1", student="stu_new"))
    with pg_database.session_scope() as s:
        done = fast_purchase.process(HandlerContext(session=s), inbox_id)
    assert done is not None and done.outcome is inbox.Outcome.PROCESSED and done.woken == []
    _assert_fulfilled(pg_database, inbox_id)


@pytest.mark.parametrize("event", [
    checkout(cs="cs_1", package="P10"),
    checkout(cs="cs_1", payment_status="unpaid"),
    checkout(cs="cs_1", metadata={}),
    checkout(cs="cs_1", student=None),
    checkout(cs="cs_1", course="NOPE"),
    checkout(cs="cs_1", metadata={"kind": "course", "course_code": "YOGA", "coursepipe_course_id": "1"}),
    # a sale of a course deleted since (the general path alerts the studio)
    checkout(cs="cs_1", metadata={"kind": "course", "course_code": "YOGA", "coursepipe_course_id": "3"}),
], ids=["package", "unpaid", "no metadata", "buyer by e-mail only", "unknown course", "course id of another code",
        "course deleted since"])
def test_anything_else_is_left_to_the_general_path_with_nothing_written(pg_database, event):
    _catalog(pg_database)
    inbox_id = store(pg_database, event)
    before = _snapshot(pg_database)
    with pg_database.session_scope() as s:
        assert fast_purchase.process(HandlerContext(session=s), inbox_id) is None
        s.rollback()
    assert _snapshot(pg_database) == before


def test_a_redelivery_is_left_to_the_general_path(pg_database):
    _catalog(pg_database)
    deliver(pg_database, checkout(cs="cs_1", pi="pi_1", event_id="evt_1"))
    inbox_id = store(pg_database, checkout(cs="cs_1", pi="pi_1", event_id="evt_2"))
    with pg_database.session_scope() as s:
        assert fast_purchase.process(HandlerContext(session=s), inbox_id) is None
    result = inbox.run_event(unit_of_work=pg_database.session_scope, inbox_id=inbox_id)
    assert result.outcome is inbox.Outcome.PROCESSED
    with pg_database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM student_course_enrollment")).scalar() == 1


def test_malformed_metadata_is_recorded_by_the_general_path(pg_database):
    _catalog(pg_database)
    event = checkout(cs="cs_1", pi="pi_1")
    event["data"]["object"]["metadata"] = "course=SFZ"
    result = deliver(pg_database, event)
    # recorded on the row by the general path, not raised out of the runner, and not retried
    assert result.outcome is inbox.Outcome.FAILED and "metadata is not an object" in result.error
    with pg_database.engine.connect() as conn:
        status, attempts, error = conn.execute(sa.text("SELECT status, attempts, last_error FROM inbox_event")).one()
    assert (status, attempts) == ("failed", 1) and "metadata is not an object" in error


# --------------------------------------------------------------------------- messages marked as purchases


def test_a_marked_purchase_is_fulfilled_without_an_orm_session(pg_database, monkeypatch):
    _catalog(pg_database)
    inbox_id = store(pg_database, checkout(cs="cs_1", pi="pi_1", student="stu_new"))
    opened = []
    monkeypatch.setattr(pg_database, "session_scope", lambda: opened.append(1))  # would fail if called
    done = inbox.run_message(database=pg_database, inbox_id=inbox_id, purchase=True)
    assert done.outcome is inbox.Outcome.PROCESSED and opened == []
    _assert_fulfilled(pg_database, inbox_id)


@pytest.mark.parametrize("event", [
    checkout(cs="cs_1", package="P10"),
    checkout(cs="cs_1", payment_status="unpaid"),
    checkout(cs="cs_1", course="NOPE"),
    refund_created(refund_id="re_1", pi="pi_1"),
], ids=["package", "unpaid", "unknown course", "another type"])
def test_a_marked_message_that_is_no_purchase_writes_nothing_and_the_general_path_runs_it(pg_database, event):
    _catalog(pg_database)
    inbox_id = store(pg_database, event)
    before = _snapshot(pg_database)
    assert inbox_runs.run_fast_purchase(pg_database, inbox_id) is None
    assert _snapshot(pg_database) == before
    marked = inbox.run_message(database=pg_database, inbox_id=inbox_id, purchase=True)
    assert marked.outcome is not inbox.Outcome.SKIPPED
    with pg_database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM inbox_event WHERE id = :i"), {"i": inbox_id}).scalar() \
            != InboxStatus.PENDING.value


def test_a_marked_purchase_whose_fast_path_fails_is_run_by_the_general_path(pg_database, monkeypatch, caplog):
    _catalog(pg_database)
    inbox_id = store(pg_database, checkout(cs="cs_1", pi="pi_1", student="stu_new"))

    # the last statement fails, after the claim, the locks and the buyer's insert have run
    monkeypatch.setattr(fast_purchase, "_FULFIL", "SELECT %(inbox_id)s::bigint / 0")
    before = _snapshot(pg_database)
    assert inbox_runs.run_fast_purchase(pg_database, inbox_id) is None
    assert _snapshot(pg_database) == before  # the buyer's insert was rolled back
    with pg_database.engine.connect() as conn:  # and nothing of that transaction is still open or held
        assert conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                                    "(SELECT oid FROM pg_database WHERE datname = current_database())")).scalar() == 0
    monkeypatch.undo()
    assert "gave inbox event" in caplog.text
    result = inbox.run_message(database=pg_database, inbox_id=inbox_id, purchase=True)
    assert result.outcome is inbox.Outcome.PROCESSED
    with pg_database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM student_course_enrollment")).scalar() == 1


def test_a_marked_message_on_sqlite_takes_the_general_path(sqlite_url):
    sqlite_db = Database(sqlite_url)
    _truncate(sqlite_db)
    _catalog(sqlite_db)
    inbox_id = store(sqlite_db, checkout(cs="cs_1", pi="pi_1", student="stu_new"))
    assert inbox_runs.run_fast_purchase(sqlite_db, inbox_id) is None
    assert inbox.run_message(database=sqlite_db, inbox_id=inbox_id, purchase=True).outcome \
        is inbox.Outcome.PROCESSED
    sqlite_db.dispose()


@pytest.mark.parametrize(("source", "event", "marked"), [
    ("stripe", checkout(cs="cs_1", pi="pi_1"), True),
    ("stripe", checkout(cs="cs_1", payment_status="unpaid"), False),
    ("stripe", checkout(cs="cs_1", package="P10"), False),
    ("stripe", checkout(cs="cs_1", metadata={}), False),
    ("stripe", refund_created(refund_id="re_1", pi="pi_1"), False),
    ("platform", checkout(cs="cs_1", pi="pi_1"), False),
])
def test_the_ingress_marks_only_what_looks_like_a_new_paid_course_purchase(source, event, marked):
    assert fast_purchase.is_purchase(source, event["type"], event) is marked


def _advisory_locks(session) -> set[int]:
    rows = session.execute(sa.text(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks"
        " WHERE locktype = 'advisory' AND pid = pg_backend_pid()")).scalars()
    return set(rows)


@pytest.mark.parametrize(("course", "outcome"), [("SFZ", inbox.Outcome.PROCESSED), ("NOPE", None)],
                         ids=["fulfilled", "unknown course, left to the general path"])
def test_the_fast_path_holds_the_subject_and_payment_locks_it_reports(pg_database, course, outcome):
    _catalog(pg_database)
    event = checkout(cs="cs_1", pi="pi_1", course=course)
    inbox_id = store(pg_database, event)
    with pg_database.session_scope() as s:
        ctx = HandlerContext(session=s)
        done = fast_purchase.process(ctx, inbox_id)
        assert (done.outcome if done else None) is outcome
        held = ctx.locks
        assert "payment:pi_1" in held  # the general path, in the same transaction, will not lock it again
        assert _advisory_locks(s) == {lock_key(key) for key in held}


def test_array_parameters_reach_postgresql_as_they_were(pg_database):
    keys = ["payment:pi_1", 'a"b', "back\\slash", "comma,{brace}", " space ", "NULL", "", "é"]
    with pg_database.engine.connect() as conn:
        driver = conn.connection.driver_connection
        row = driver.execute("SELECT %s::text[], %s::bigint[], %s::bigint[]", (
            fast_purchase._text_array(keys), fast_purchase._int_array([1, -2, 2**62]),
            fast_purchase._int_array([]))).fetchone()
    assert row == (keys, [1, -2, 2**62], [])


def test_a_marked_message_delivered_twice_fulfils_once(pg_database):
    _catalog(pg_database)
    inbox_id = store(pg_database, checkout(cs="cs_1", pi="pi_1", student="stu_new"))
    first = inbox.run_message(database=pg_database, inbox_id=inbox_id, purchase=True)
    again = inbox.run_message(database=pg_database, inbox_id=inbox_id, purchase=True)
    assert (first.outcome, again.outcome) == (inbox.Outcome.PROCESSED, inbox.Outcome.SKIPPED)
    with pg_database.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM student_course_enrollment")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM outbox_message")).scalar() == 2
