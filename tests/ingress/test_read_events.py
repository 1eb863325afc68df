"""GET /v1/events: every outbound platform event in the order written, paged by an opaque cursor; a
row that commits late is never skipped; old events stay readable."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.models import OutboxMessage
from db.types import utcnow
from ingress.app import create_app
from tasks.messaging.outbox import add_mail, add_platform_event
from tests.conftest import assert_contract_kept, contract_checked, make_settings

READ = {"Authorization": "Bearer feed-reader-0123456789abcdef"}


@pytest.fixture
def app(runtime):
    app = create_app(make_settings(runtime.settings.database_url, read_api_tokens=("feed-reader-0123456789abcdef",)), runtime=runtime)
    yield contract_checked(app)
    assert_contract_kept(app)


def _write(database, n, start=0, enrollment_id=None):
    with database.session_scope() as s:
        for i in range(start, start + n):
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": f"bk_{i}", "reason": "no_active_enrollment"},
                               dedupe_key=f"r:{i}", enrollment_id=enrollment_id)
        add_mail(session=s, template="booking_confirmed", recipient="a@example.test", context={},
                 dedupe_key=f"m:{start}")  # mail is not in the feed


def test_pages_through_every_event_in_order_and_waits_at_the_end(client, runtime):
    _write(runtime.db, 5)
    first = client.get("/v1/events?limit=2", headers=READ)
    assert first.status_code == 200
    body = first.json
    assert [e["data"]["booking_id"] for e in body["events"]] == ["bk_0", "bk_1"]
    event = body["events"][0]
    assert set(event) >= {"id", "type", "created_at", "sequence", "data"}
    assert event["id"].startswith("cp_out_") and event["type"] == "booking.rejected" and event["sequence"] == 1
    seen = [e["data"]["booking_id"] for e in body["events"]]
    cursor = body["next"]
    while True:
        page = client.get(f"/v1/events?after={cursor}&limit=2", headers=READ).json
        if not page["events"]:
            assert page["next"] == cursor  # nothing new: ask again with the same cursor
            break
        seen += [e["data"]["booking_id"] for e in page["events"]]
        cursor = page["next"]
    assert seen == [f"bk_{i}" for i in range(5)]
    _write(runtime.db, 2, start=5)
    assert [e["data"]["booking_id"] for e in client.get(f"/v1/events?after={cursor}", headers=READ).json["events"]] \
        == ["bk_5", "bk_6"]


def test_the_feed_and_the_push_carry_the_same_event(client, runtime):
    from tasks.messaging import delivery

    _write(runtime.db, 1)
    served = client.get("/v1/events", headers=READ).json["events"][0]
    with runtime.db.session_scope() as s:
        row = s.scalar(select(OutboxMessage).where(OutboxMessage.topic == "booking.rejected"))
        pushed = delivery.outbound_event(public_id=row.public_id, topic=row.topic, payload=row.payload,
                                         created_at=row.created_at, sequence=row.sequence)
    assert served == pushed


@pytest.mark.parametrize("query,code", [("after=%%%", "invalid_cursor"), ("after=bm90LWEtY3Vyc29y", "invalid_cursor"),
                                        ("after=cDkyMjMzNzIwMzY4NTQ3NzU4MDg", "invalid_cursor"),  # p2**63
                                        ("limit=0", "invalid_limit"), ("limit=1001", "invalid_limit"),
                                        ("limit=ten", "invalid_limit"),
                                        # before: int() read these as 10, 100 and 1
                                        ("limit=1_0", "invalid_limit"), ("limit=%20100", "invalid_limit"),
                                        ("limit=%D9%A1", "invalid_limit")])
def test_bad_cursor_or_limit_is_400(client, query, code):
    response = client.get(f"/v1/events?{query}", headers=READ)
    assert response.status_code == 400 and response.json["error"]["code"] == code


@pytest.mark.parametrize("cursor", ["cCAx", "cNmj", "cCsx"])  # "p 1", "p٣" (an Arabic-Indic 3), "p+1"
def test_a_cursor_is_decoded_only_from_ascii_digits(cursor):
    """Before: int() read each of these as a position."""
    from tasks.messaging.event_feed import InvalidCursor, decode_cursor, encode_cursor

    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)
    assert decode_cursor(encode_cursor(3)) == 3


def test_a_cursor_past_the_newest_event_is_400_not_an_empty_page_forever(client, runtime):
    """A cursor kept across a restore of our database (or from another installation) skipped every event up to
    its position, silently: the feed answered an empty page with the same cursor until then."""
    from tasks.messaging.event_feed import encode_cursor

    ahead = encode_cursor(5)
    before = client.get(f"/v1/events?after={ahead}", headers=READ)
    assert before.status_code == 400 and before.json["error"]["code"] == "invalid_cursor"
    assert "past this feed's newest event (0)" in before.json["error"]["message"]
    _write(runtime.db, 3)
    page = client.get("/v1/events", headers=READ).json
    assert len(page["events"]) == 3
    assert client.get(f"/v1/events?after={ahead}", headers=READ).status_code == 400
    # the cursor the feed gave is good, also when nothing follows it yet
    caught_up = client.get(f"/v1/events?after={page['next']}", headers=READ)
    assert caught_up.status_code == 200 and caught_up.json == {"events": [], "next": page["next"]}


def test_needs_a_token(client):
    assert client.get("/v1/events").status_code == 401


def test_events_older_than_a_year_are_still_served(client, runtime):
    _write(runtime.db, 1)
    with runtime.db.session_scope() as s:
        s.execute(update(OutboxMessage).values(created_at=utcnow() - timedelta(days=runtime.settings.retention_days - 1)))
    assert len(client.get("/v1/events", headers=READ).json["events"]) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"])
def test_a_row_that_commits_late_is_not_skipped(client, runtime):
    """Transaction A writes first but commits after B: A is served after the cursor that passed B."""
    written, release = threading.Event(), threading.Event()

    def slow_writer():
        with runtime.db.session_scope() as s:
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": "slow", "reason": "no_active_enrollment"},
                               dedupe_key="slow")
            s.flush()
            written.set()
            release.wait(20)

    thread = threading.Thread(target=slow_writer)
    thread.start()
    try:
        assert written.wait(20)
        with runtime.db.session_scope() as s:
            add_platform_event(session=s, type="booking.rejected", data={"booking_id": "fast", "reason": "no_active_enrollment"},
                               dedupe_key="fast")
        page = client.get("/v1/events", headers=READ).json
        assert [e["data"]["booking_id"] for e in page["events"]] == ["fast"]  # "slow" is not committed yet
    finally:
        release.set()
        thread.join(20)
    # "slow" has the lower row id but became visible later: it comes after the cursor, not before it
    page = client.get(f"/v1/events?after={page['next']}", headers=READ).json
    assert [e["data"]["booking_id"] for e in page["events"]] == ["slow"]


def test_positions_are_given_in_batches_in_row_order_without_gaps(runtime):
    from tasks.messaging import event_feed

    _write(runtime.db, 3)
    _write(runtime.db, 4, start=3)  # a mail row between the two runs of events: it never gets a position
    with runtime.db.session_scope() as s:
        assert event_feed.assign_positions(session=s, limit=4) == 4
    with runtime.db.session_scope() as s:
        assert event_feed.assign_positions(session=s, limit=4) == 3
        assert event_feed.assign_positions(session=s, limit=4) == 0
    with runtime.db.session_scope() as s:
        rows = s.execute(select(OutboxMessage.channel, OutboxMessage.feed_position).order_by(OutboxMessage.id)).all()
    assert [position for channel, position in rows if channel == "platform"] == [1, 2, 3, 4, 5, 6, 7]
    assert [position for channel, position in rows if channel == "mail"] == [None, None]
