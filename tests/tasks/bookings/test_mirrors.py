"""student.upserted / class.upserted keep our mirrors current; an older event never overwrites a newer state."""
from __future__ import annotations

from datetime import timedelta

from db.models import GroupClass, Student
from tasks.inbox.runner import Outcome
from tests.tasks.bookings.bookings_support import T0, at, booking_created, class_upserted, deliver, student_upserted, twin


def _student(database, student_id="stu_1"):
    with database.session_scope() as s:
        row = s.get(Student, student_id)
        s.expunge(row)
        return row


def _class(database, class_id):
    with database.session_scope() as s:
        row = s.get(GroupClass, class_id)
        s.expunge(row)
        return row


def test_student_upsert_creates_then_updates(database):
    assert deliver(database, student_upserted(email="a@example.test", name="A", when=at(0))).outcome \
        is Outcome.PROCESSED
    deliver(database, student_upserted(email="b@example.test", name="B", tz="Asia/Tokyo", when=at(5)))
    row = _student(database)
    assert (row.email, row.name, row.timezone, row.source_updated_at) == ("b@example.test", "B", "Asia/Tokyo", at(5))


def test_student_upsert_twice_is_a_no_op(database):
    event = student_upserted(email="a@example.test", when=at(0))
    deliver(database, event)
    deliver(database, twin(event))
    assert deliver(database, event).outcome is Outcome.SKIPPED  # the redelivered row is already processed
    assert _student(database).email == "a@example.test"


def test_an_older_student_upsert_never_overwrites_a_newer_one(database):
    deliver(database, student_upserted(email="new@example.test", when=at(10)))
    deliver(database, student_upserted(email="old@example.test", when=at(5)))
    row = _student(database)
    assert row.email == "new@example.test" and row.source_updated_at == at(10)


def test_a_booking_before_the_student_creates_a_stub_the_upsert_completes(database):
    deliver(database, booking_created("bk_1", "gc_plain", student_id="stu_new"))
    stub = _student(database, "stu_new")
    assert stub.email is None and stub.source_updated_at is None
    deliver(database, student_upserted("stu_new", email="n@example.test", when=at(-100)))  # even an old one
    assert _student(database, "stu_new").email == "n@example.test"


def test_class_upsert_mirrors_every_field_and_ignores_older(database):
    start = T0 + timedelta(days=2)
    deliver(database, class_upserted("gc_9", title="Salsa", capacity=12, seats_taken=3, starts_at=start, when=at(10)))
    row = _class(database, "gc_9")
    assert (row.title, row.capacity, row.seats_taken, row.seats_left, row.starts_at, row.status.value) == (
        "Salsa", 12, 3, 9, start, "scheduled")
    assert row.ends_at == start + timedelta(hours=1)
    older = class_upserted("gc_9", title="Old", capacity=12, seats_taken=0, when=at(5))
    deliver(database, older)
    deliver(database, twin(older))
    assert _class(database, "gc_9").title == "Salsa" and _class(database, "gc_9").seats_taken == 3
    deliver(database, class_upserted("gc_9", title="Salsa", capacity=12, seats_taken=11, starts_at=start,
                                     when=at(20)))
    assert _class(database, "gc_9").seats_left == 1


def test_stored_envelope_without_the_occurred_at_column_still_orders(database):
    """The handler falls back to the envelope's occurred_at when the column is empty."""
    from db.enums import InboxSource
    from tests import inbox_api as inbox
    from tests.tasks.bookings.bookings_support import run

    newer = student_upserted(email="new@example.test", when=at(10))
    deliver(database, newer)
    older = student_upserted(email="old@example.test", when=at(5))
    with database.session_scope() as s:
        inbox_id = inbox.store_event(session=s, source=InboxSource.PLATFORM, event_id=older["id"],
                                     type=older["type"], payload=older, subject="student:stu_1",
                                     occurred_at=None).id
    assert run(database, inbox_id).outcome is Outcome.PROCESSED
    assert _student(database).email == "new@example.test"


def test_an_upsert_stamped_in_the_future_does_not_shut_out_the_updates_after_it(database):
    # the platform's clock ran an hour ahead once: that update counts as of when it reached us
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    deliver(database, student_upserted(email="ahead@example.test", when=now + timedelta(hours=1)))
    assert _student(database).source_updated_at < now + timedelta(minutes=1)
    deliver(database, student_upserted(email="next@example.test", when=now + timedelta(seconds=1)))
    assert _student(database).email == "next@example.test"
    deliver(database, class_upserted("gc_9", title="Ahead", when=now + timedelta(hours=1)))
    deliver(database, class_upserted("gc_9", title="Next", when=now + timedelta(seconds=1)))
    assert _class(database, "gc_9").title == "Next"
