"""What leaves the installation is named so that no other installation can send the same name: outbound
event ids, mail Message-IDs and Stripe Idempotency-Keys. Platform events carry a per-enrollment `sequence`
and `created_at`; finishing every step sends `enrollment.completed`."""
from __future__ import annotations

import json
import secrets

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from db.database import Database
from db.enums import OutboxChannel
from db.migrate import upgrade
from db.models import CourseProgram, OutboxMessage
from tasks.messaging import delivery
from tasks.catalog import publishing
from workers import publishing as publish_calls
from tests import factories
from tests.conftest import PG_URL, make_settings, need
from tests.tasks.bookings import bookings_support as bs
from tests.tasks.purchases import payments_support as ps
from tests.tasks.catalog.test_catalog import course, save


@pytest.fixture
def two_environments(db_backend, tmp_path):
    """Two fresh databases migrated from nothing, as production and staging (or a restore) would be."""
    urls, admin = [], None
    if db_backend == "postgres":
        need("postgres")
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        for _ in range(2):
            name = f"coursepipe_env_{secrets.token_hex(4)}"
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            urls.append(sa.make_url(PG_URL).set(database=name).render_as_string(hide_password=False))
    else:
        urls = [f"sqlite:///{tmp_path / f'env{n}.db'}" for n in range(2)]
    for url in urls:
        upgrade(url)
    databases = [Database(url) for url in urls]
    yield databases
    for database in databases:
        database.dispose()
    if admin is not None:
        with admin.connect() as conn:
            for url in urls:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{sa.make_url(url).database}" WITH (FORCE)'))
        admin.dispose()


def _same_history(database, stripe_server) -> dict[str, set[str]]:
    """Publish a course to the one Stripe account, sell it, book and attend; return what left."""
    settings = make_settings(database.url, smtp_url="smtp://127.0.0.1:1", platform_callback_url="http://x.test/",
                             **stripe_server.settings_changes())
    before = {c.idempotency_key for c in stripe_server.calls("POST")}
    save(database, course())
    publish_calls.publish(publishing.COURSE, "SFZ", unit_of_work=database.session_scope, settings=settings)
    keys = {c.idempotency_key for c in stripe_server.calls("POST")} - before
    assert ps.deliver(database, ps.checkout(cs="cs_1", pi="pi_1", student="stu_1")).outcome.value == "processed"
    with database.session_scope() as s:
        jobs = delivery.claim_due(session=s, settings=settings, limit=100)
    event_ids = {json.loads(delivery.platform_body(j))["id"] for j in jobs if j.channel is OutboxChannel.PLATFORM}
    message_ids = {delivery.mail_message_id(j.public_id) for j in jobs if j.channel is OutboxChannel.MAIL}
    assert event_ids and message_ids and keys
    return {"event ids": event_ids, "Message-IDs": message_ids, "idempotency keys": keys}


def test_two_environments_share_no_event_id_message_id_or_idempotency_key(two_environments, stripe_server):
    first, second = (_same_history(database, stripe_server) for database in two_environments)
    for kind in first:
        assert first[kind].isdisjoint(second[kind]), kind
    # both databases numbered their rows alike: the names differ although the row ids are the same
    ids = []
    for database in two_environments:
        with database.session_scope() as s:
            ids.append(sorted(s.scalars(select(OutboxMessage.id))))
    assert ids[0] == ids[1]
    # and the second installation got its own Stripe product, not the first one's (a replayed key)
    assert len(stripe_server.products) == 2


def _platform_events(database, enrollment_id):
    with database.session_scope() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.channel == OutboxChannel.PLATFORM,
                                                     OutboxMessage.enrollment_id == enrollment_id)
                         .order_by(OutboxMessage.id)).all()
        return [(r.topic, r.sequence, r.created_at) for r in rows]


def test_sequence_increases_per_enrollment_and_completion_is_announced(database):
    w = bs.world(database, steps=2)
    with database.session_scope() as s:
        student = factories.student(s, id="stu_2", email="stu_2@example.test")
        other = factories.enrollment(s, student, s.get(CourseProgram, w.program_id), session_id="cs_other").id
    for n, position in ((1, 1), (2, 2)):
        bs.deliver(database, bs.booking_created(f"bk_{n}", w.option(position), step_id=w.step_ids[position - 1]))
    bs.deliver(database, bs.booking_created("bk_9", w.option(1), step_id=w.step_ids[0], student_id="stu_2"))
    bs.deliver(database, bs.attendance("bk_1", when=bs.at(100)))
    bs.deliver(database, bs.attendance("bk_2", when=bs.at(200)))
    events = _platform_events(database, w.enrollment_id)
    assert [topic for topic, _, _ in events][-1] == "enrollment.completed"
    assert [seq for _, seq, _ in events] == list(range(1, len(events) + 1))
    assert all(created is not None for _, _, created in events)
    assert [seq for _, seq, _ in _platform_events(database, other)] == [1]
    with database.session_scope() as s:
        completed = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "enrollment.completed"))
        assert completed.payload["data"] == {
            "enrollment_id": w.enrollment_id, "student_id": "stu_1", "course_code": "SFZ", "status": "completed",
            "completed_steps": 2, "completed_at": bs.at(200).isoformat()}


def test_the_purchase_fast_path_numbers_enrollment_created_first(pg_database):
    from tests.tasks.purchases.test_fast_purchase import _catalog

    _catalog(pg_database)
    assert ps.deliver(pg_database, ps.checkout(cs="cs_1", pi="pi_1", student="stu_new"), fast=True).outcome.value \
        == "processed"
    with pg_database.session_scope() as s:
        enrollment_id, last = s.execute(sa.text("SELECT id, last_event_sequence FROM student_course_enrollment")).one()
    assert [(t, seq) for t, seq, _ in _platform_events(pg_database, enrollment_id)] == [("enrollment.created", 1)]
    assert last == 1
