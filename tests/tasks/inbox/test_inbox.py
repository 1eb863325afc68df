"""The runner core: outcomes, retries, parking and waking, replay — on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

import tests.workers.support as support
from db.enums import InboxSource, InboxStatus
from db.models import AlertLog, InboxEvent
from tests import inbox_api as inbox
from tests.conftest import drain
from tests.signing import platform_event


def store(database, type_, data=None, event_id=None, subject=None) -> int:
    event = platform_event(type_, data or {}, event_id=event_id)
    with database.session_scope() as s:
        return inbox.store_event(session=s, source=InboxSource.PLATFORM, event_id=event["id"], type=type_,
                                 payload=event, subject=subject, occurred_at=None).id


def run(database, inbox_id, **kw) -> inbox.Result:
    with database.session_scope() as s:
        return inbox.process_event(session=s, inbox_id=inbox_id, **kw)


def effects(database) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(AlertLog).where(AlertLog.kind == "test"))


def row(database, inbox_id) -> InboxEvent:
    with database.session_scope() as s:
        return s.get(InboxEvent, inbox_id)


def test_store_is_idempotent_per_source_and_event_id(database):
    first = store(database, "test.effect", event_id="e1")
    with database.session_scope() as s:
        again = inbox.store_event(session=s, source=InboxSource.PLATFORM, event_id="e1", type="test.effect",
                                  payload={}, subject=None, occurred_at=None)
    assert again.duplicate and again.id == first


def test_processed_once_and_a_rerun_is_a_no_op(database):
    inbox_id = store(database, "test.effect")
    assert run(database, inbox_id).outcome is inbox.Outcome.PROCESSED
    assert run(database, inbox_id).outcome is inbox.Outcome.SKIPPED
    assert effects(database) == 1
    r = row(database, inbox_id)
    assert r.status == InboxStatus.PROCESSED and r.attempts == 1 and r.processed_at is not None


def test_unknown_type_is_ignored(database):
    inbox_id = store(database, "something.else")
    assert run(database, inbox_id).outcome is inbox.Outcome.IGNORED
    assert row(database, inbox_id).status == InboxStatus.IGNORED


def test_transient_failure_rolls_back_effects_and_retries_until_success(database):
    inbox_id = store(database, "test.flaky", event_id="flaky-1")
    support.BEHAVIOUR["flaky-1"] = {"fail_times": 2}
    assert run(database, inbox_id).outcome is inbox.Outcome.RETRY
    assert run(database, inbox_id).outcome is inbox.Outcome.RETRY
    assert effects(database) == 0 and row(database, inbox_id).status == InboxStatus.PENDING
    assert "flaky failure on attempt 2" in row(database, inbox_id).last_error
    assert run(database, inbox_id).outcome is inbox.Outcome.PROCESSED
    assert effects(database) == 1


def test_exhausted_retries_end_failed_and_a_replay_after_the_fix_processes(database):
    inbox_id = store(database, "test.flaky", event_id="broken-1")
    support.BEHAVIOUR["broken-1"] = {"broken": True}
    outcomes = [run(database, inbox_id, max_attempts=3).outcome for _ in range(3)]
    assert outcomes == [inbox.Outcome.RETRY, inbox.Outcome.RETRY, inbox.Outcome.FAILED]
    failed = row(database, inbox_id)
    assert failed.status == InboxStatus.FAILED and "retries exhausted" in failed.last_error
    assert run(database, inbox_id).outcome is inbox.Outcome.SKIPPED  # failed stays failed
    support.BEHAVIOUR["broken-1"] = {}  # the fix
    with database.session_scope() as s:
        inbox.replay(session=s, inbox_id=inbox_id)
    assert run(database, inbox_id).outcome is inbox.Outcome.PROCESSED
    assert effects(database) == 1


def test_permanent_error_fails_at_once_with_the_reason(database):
    inbox_id = store(database, "test.permanent")
    assert run(database, inbox_id).outcome is inbox.Outcome.FAILED
    r = row(database, inbox_id)
    assert r.status == InboxStatus.FAILED and "unknown course XYZ" in r.last_error and r.attempts == 1
    assert effects(database) == 0


def test_replay_refuses_processed_and_unknown(database):
    inbox_id = store(database, "test.effect")
    run(database, inbox_id)
    with pytest.raises(inbox.NotReplayable):
        with database.session_scope() as s:
            inbox.replay(session=s, inbox_id=inbox_id)
    from tasks.errors import NotFound

    with pytest.raises(NotFound):
        with database.session_scope() as s:
            inbox.replay(session=s, inbox_id=987654)


def test_wrong_order_parks_then_wakes_when_the_prerequisite_arrives(database):
    waiter = store(database, "test.wait", {"needs": "thing:1"})
    assert run(database, waiter).outcome is inbox.Outcome.WAITING
    parked = row(database, waiter)
    assert parked.status == InboxStatus.WAITING and parked.waiting_for == "thing:1"
    provider = store(database, "test.provide", {"key": "thing:1"})
    result = run(database, provider)
    assert result.outcome is inbox.Outcome.PROCESSED and result.woken == [waiter]
    assert row(database, waiter).status == InboxStatus.PENDING
    assert run(database, waiter).outcome is inbox.Outcome.PROCESSED
    assert effects(database) == 1


def test_an_event_parked_the_whole_horizon_fails_only_once_it_has_waited_longer(database):
    """WAIT_HORIZON_HOURS: a row that waits longer than it ends failed ("for more than 72 hours"); before, one
    parked exactly 72 hours ago already did."""
    from datetime import timedelta

    from tasks.inbox.parking import expire_waiting

    waiter = store(database, "test.wait", {"needs": "thing:9"})
    assert run(database, waiter).outcome is inbox.Outcome.WAITING
    horizon, arrived = timedelta(hours=72), row(database, waiter).received_at
    with database.session_scope() as s:
        assert expire_waiting(session=s, horizon=horizon, now=arrived + horizon) == []
    with database.session_scope() as s:
        assert expire_waiting(session=s, horizon=horizon, now=arrived + horizon + timedelta(microseconds=1)) == [waiter]
    assert "for more than 72 hours" in row(database, waiter).last_error


def test_an_event_that_gave_up_waiting_wakes_when_the_prerequisite_arrives_after_all(database):
    from datetime import timedelta

    from tasks.inbox.parking import expire_waiting

    waiter = store(database, "test.wait", {"needs": "thing:4"})
    assert run(database, waiter).outcome is inbox.Outcome.WAITING
    with database.session_scope() as s:
        assert expire_waiting(session=s, horizon=timedelta(0)) == [waiter]
    assert row(database, waiter).status == InboxStatus.FAILED
    other = store(database, "test.provide", {"key": "thing:5"})  # something else provided: stays failed
    assert run(database, other).woken == []
    provider = store(database, "test.provide", {"key": "thing:4"})
    assert run(database, provider).woken == [waiter]
    woken = row(database, waiter)
    assert (woken.status, woken.waiting_for, woken.processed_at) == (InboxStatus.PENDING, None, None)
    assert run(database, waiter).outcome is inbox.Outcome.PROCESSED
    assert effects(database) == 1


def test_a_handler_change_to_its_own_row_is_kept_beside_the_wake(database):
    # on PostgreSQL the runner writes the finished row and wakes the parked rows in one statement, and the
    # row leaves the session: a change the handler made to its own row must still be saved
    waiter = store(database, "test.wait", {"needs": "thing:3"})
    run(database, waiter)
    provider = store(database, "test.provide_and_prune", {"key": "thing:3"})
    result = run(database, provider)
    assert result.outcome is inbox.Outcome.PROCESSED and result.woken == [waiter]
    done = row(database, provider)
    assert done.status == InboxStatus.PROCESSED and done.attempts == 1 and done.processed_at is not None
    assert done.payload["pruned"] is True
    assert row(database, waiter).status == InboxStatus.PENDING and row(database, waiter).waiting_for is None


def test_scheduled_retry_of_waiting_events(database):
    waiter = store(database, "test.wait", {"needs": "thing:2"})
    run(database, waiter)
    with database.session_scope() as s:  # the prerequisite arrived by another path
        s.add(AlertLog(kind="other", dedupe_key="x", subject="thing:2"))
    with database.session_scope() as s:
        assert inbox.requeue_waiting(session=s) == [waiter]
    assert run(database, waiter).outcome is inbox.Outcome.PROCESSED


def test_the_scheduled_retry_leaves_an_event_that_finished_while_it_read_finished(pg_database):
    """Before: the retry read the waiting rows, then set them pending by id alone: one woken and processed in
    between (its transaction committing while the retry's update waited for the row) was made pending again,
    and processed a second time."""
    import threading

    from tests.conftest import while_held

    database = pg_database
    waiter = store(database, "test.wait", {"needs": "thing:4"})
    run(database, waiter)
    held, release = threading.Event(), threading.Event()

    def processed_meanwhile():
        with database.session_scope() as s:
            s.get(InboxEvent, waiter, with_for_update=True).status = InboxStatus.PROCESSED
            s.flush()
            held.set()
            assert release.wait(30)

    def retry():
        with database.session_scope() as s:
            return inbox.requeue_waiting(session=s)

    _, retried, waited = while_held(database, processed_meanwhile, retry, held=held, release=release)
    assert waited and retried.result() == []
    assert row(database, waiter).status == InboxStatus.PROCESSED


def test_end_to_end_through_the_embedded_broker(runtime, worker):
    support.BEHAVIOUR["e2e-flaky"] = {"fail_times": 1}
    ids = [store(runtime.db, "test.effect"), store(runtime.db, "test.flaky", event_id="e2e-flaky")]
    from workers.actors import enqueue_inbox

    enqueue_inbox(ids)
    drain(runtime)
    assert [row(runtime.db, i).status for i in ids] == [InboxStatus.PROCESSED, InboxStatus.PROCESSED]
    assert effects(runtime.db) == 2


def test_an_event_of_the_awaited_subject_wakes_the_parked_one(database):
    waiter = store(database, "test.wait", {"needs": "payment:pi_1"})
    run(database, waiter)
    with database.session_scope() as s:
        s.add(AlertLog(kind="other", dedupe_key="p", subject="payment:pi_1"))
    other = store(database, "test.effect", subject="payment:pi_1")
    assert run(database, other).woken == [waiter]


def test_a_remote_look_up_runs_outside_any_transaction_and_once(database):
    inbox_id = store(database, "test.remote", event_id="remote-1")
    support.REMOTE_CALLS.clear()
    # the fetch must find no connection checked out of the pool: no transaction is open around it
    support.REMOTE_PROBE["open_connections"] = database.engine.pool.checkedout
    result = inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_id)
    assert result.outcome is inbox.Outcome.PROCESSED
    assert support.REMOTE_CALLS == [{"event_id": "remote-1", "open_connections": 0}]
    assert effects(database) == 1 and row(database, inbox_id).attempts == 1


def test_a_failed_remote_look_up_is_recorded_on_the_row_and_retried(database):
    inbox_id = store(database, "test.remote", {"remote_fails": True}, event_id="remote-2")
    result = inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_id)
    assert result.outcome is inbox.Outcome.RETRY and "remote service down" in result.error
    assert row(database, inbox_id).status == InboxStatus.PENDING and effects(database) == 0


def test_process_event_alone_asks_for_the_look_up_and_changes_nothing(database):
    inbox_id = store(database, "test.remote", event_id="remote-3")
    result = run(database, inbox_id)
    assert result.outcome is inbox.Outcome.FETCH and result.needs.key == "remote:remote-3"
    r = row(database, inbox_id)
    assert r.status == InboxStatus.PENDING and r.attempts == 0 and effects(database) == 0


def test_store_event_on_a_plain_connection_is_kept_by_its_commit(database):
    """The PostgreSQL insert runs on the driver connection; a Connection's own commit must still commit it."""
    with database.engine.connect() as conn:
        stored = inbox.store_event(session=conn, source=InboxSource.PLATFORM, event_id="evt_conn", type="x.y",
                                   payload={"id": "evt_conn"}, subject=None, occurred_at=None)
        conn.commit()
    with database.session_scope() as s:
        assert s.scalar(select(InboxEvent.id).where(InboxEvent.event_id == "evt_conn")) == stored.id


def test_a_handler_that_keeps_asking_for_remote_data_fails_visibly(database):
    inbox_id = store(database, "test.greedy", event_id="greedy-1")
    result = inbox.run_event(unit_of_work=database.session_scope, inbox_id=inbox_id)
    assert result.outcome is inbox.Outcome.FAILED and "kept asking for remote data" in result.error
    r = row(database, inbox_id)
    assert r.status == InboxStatus.FAILED and r.attempts == 1 and "kept asking" in r.last_error


def test_with_remote_fetches_between_units_of_work_for_callers_outside_the_runner(database):
    calls = []

    def work(ctx):
        return ctx.fetched("k", lambda: calls.append(database.engine.pool.checkedout()) or "v")

    assert inbox.with_remote(database.session_scope, work) == "v"
    assert calls == [0]  # fetched once, with no connection checked out


@pytest.mark.parametrize("bad", ["12", 1.5, None, True])
def test_a_message_naming_no_row_id_is_dropped_with_an_error_not_retried(database, caplog, bad):
    """Messages come from the pipeline itself; one that names no row cannot succeed on a retry."""
    inbox_id = store(database, "test.effect", event_id="bad-id-1")
    for purchase in (False, True):
        result = inbox.run_message(database=database, inbox_id=bad, purchase=purchase)
        assert result.outcome is inbox.Outcome.SKIPPED and "not an inbox row id" in result.error
    assert "not a row id: dropped" in caplog.text
    assert row(database, inbox_id).status == InboxStatus.PENDING and effects(database) == 0


def test_finish_and_wake_leaves_a_row_with_other_unsaved_changes_to_the_session(database):
    # the one-statement finish writes only the runner's columns; a row with any other change is left to
    # the session's flush (and on SQLite the finish is always the flush and a separate wake)
    inbox_id = store(database, "test.effect")
    with database.session_scope() as s:
        event = s.get(InboxEvent, inbox_id)
        event.payload = {**event.payload, "pruned": True}
        event.status, event.attempts = InboxStatus.PROCESSED, 1
        assert inbox.finish_and_wake(session=s, event=event, keys={"nothing"}) is None
        assert event in s
    done = row(database, inbox_id)
    assert done.status == InboxStatus.PROCESSED and done.payload["pruned"] is True
