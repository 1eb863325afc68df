"""The dashboard's HTML side over the Flask test client: login, CSRF, pages, actions."""
from __future__ import annotations

import html
import re

from sqlalchemy import select, update

from db.enums import InboxStatus, OutboxChannel, OutboxStatus
from db.models import AdminSession, InboxEvent, OutboxMessage, StudentCourseProgress
from db.types import utcnow
from tests import factories
from tests.conftest import ADMIN_TOKEN, drain
from tests.signing import stripe_headers
from tests.tasks.purchases.payments_support import checkout

import json


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def login(client) -> str:
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": "", "password": ADMIN_TOKEN, "csrf_token": csrf_of(page.get_data(True))})
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/")
    return csrf_of(client.get("/admin/").get_data(True))


def post_stripe(client, event) -> dict:
    body = json.dumps(event)
    response = client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert response.status_code == 200, response.get_data(True)
    return response.get_json()


def test_pages_need_a_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert client.get("/admin/ui/reports").status_code == 302


def test_wrong_token_is_refused_and_sets_no_session(client):
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": "", "password": "not-the-token", "csrf_token": csrf_of(page.get_data(True))})
    assert response.status_code == 401 and "not valid" in response.get_data(True)
    assert client.get("/admin/").status_code == 302


def test_login_without_csrf_token_is_refused(client):
    client.get("/admin/login")
    response = client.post("/admin/login", data={"email": "", "password": ADMIN_TOKEN})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "csrf_failed"
    assert client.get("/admin/").status_code == 302


def test_post_without_or_with_a_wrong_csrf_token_is_refused(client, runtime):
    login(client)
    with runtime.db.session_scope() as s:
        s.add(InboxEvent(source="platform", event_id="pev_x", type="student.upserted", payload={},
                         status=InboxStatus.FAILED, last_error="boom"))
    inbox_id = 1 if runtime.db.dialect == "sqlite" else None
    with runtime.db.session_scope() as s:
        inbox_id = s.scalar(select(InboxEvent.id))
    for data in ({}, {"csrf_token": "forged"}):
        response = client.post(f"/admin/ui/events/{inbox_id}/replay", data=data)
        assert response.status_code == 403
    with runtime.db.session_scope() as s:
        assert s.get(InboxEvent, inbox_id).status is InboxStatus.FAILED  # nothing happened


def test_logout_ends_the_session(client):
    csrf = login(client)
    assert client.post("/admin/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/admin/").status_code == 302


def test_next_is_kept_but_never_leaves_the_site(client):
    page = client.get("/admin/login?next=//evil.example/x")
    response = client.post("/admin/login", data={"email": "", "password": ADMIN_TOKEN, "csrf_token": csrf_of(page.get_data(True)),
                                                 "next": "//evil.example/x"})
    assert response.headers["Location"].endswith("/admin/")


def test_an_action_pressed_once_the_session_has_ended_returns_to_its_page_after_login(client, runtime):
    """The redirect after login is followed with a GET, so `next` never names the action's POST-only URL: it
    names the page the button was on (the Referer, from this site only), else the dashboard home."""
    with runtime.db.session_scope() as s:
        event = InboxEvent(source="platform", event_id="pev_late", type="student.upserted", payload={},
                           status=InboxStatus.FAILED, last_error="boom")
        s.add(event)
        s.flush()
        inbox_id = event.id
    for referer, lands in ((f"http://localhost/admin/ui/events/{inbox_id}?tab=1", f"/admin/ui/events/{inbox_id}?tab=1"),
                           (None, "/admin/"), (f"http://evil.example/admin/ui/events/{inbox_id}", "/admin/"),
                           ("http://[::1/admin/ui/events", "/admin/")):  # no URL (it was a 500)
        csrf = login(client)
        with runtime.db.session_scope() as s:  # the session's absolute end passes while the page is open
            s.execute(update(AdminSession).values(expires_at=utcnow()))
        pressed = client.post(f"/admin/ui/events/{inbox_id}/replay", data={"csrf_token": csrf},
                              headers={"Referer": referer} if referer else {})
        assert pressed.status_code == 302 and "/admin/login" in pressed.headers["Location"]
        page = client.get(pressed.headers["Location"]).get_data(True)
        again = client.post("/admin/login", data={
            "email": "", "password": ADMIN_TOKEN, "csrf_token": csrf_of(page),
            "next": html.unescape(re.search(r'name="next" value="([^"]*)"', page).group(1))})
        assert again.status_code == 302 and again.headers["Location"].endswith(lands), (referer, again.headers)
        assert client.get(again.headers["Location"]).status_code == 200
    with runtime.db.session_scope() as s:
        assert s.get(InboxEvent, inbox_id).status is InboxStatus.FAILED  # the action was not done behind the login


def test_bearer_token_alone_does_not_open_the_html_pages(client, admin_headers):
    assert client.get("/admin/", headers=admin_headers).status_code == 302


def test_failed_event_replayed_from_the_dashboard_is_processed(client, runtime, worker):
    post_stripe(client, checkout(cs="cs_dash_1", pi="pi_dash_1"))  # course SFZ does not exist yet
    drain(runtime)
    with runtime.db.session_scope() as s:
        event = s.scalar(select(InboxEvent))
        assert event.status is InboxStatus.FAILED
        inbox_id = event.id
        factories.program(s)  # the fix: the course now exists
    csrf = login(client)
    home = client.get("/admin/").get_data(True)
    assert f'data-inbox-id="{inbox_id}"' in home and "unknown course" in home
    response = client.post(f"/admin/ui/events/{inbox_id}/replay", data={"csrf_token": csrf})
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/admin/ui/events/{inbox_id}")
    drain(runtime)
    page = client.get(f"/admin/ui/events/{inbox_id}").get_data(True)
    assert 'id="event-status">processed<' in page
    # replaying a processed event is refused politely, not repeated
    again = client.post(f"/admin/ui/events/{inbox_id}/replay", data={"csrf_token": csrf}, follow_redirects=True)
    assert "already processed" in again.get_data(True)


def test_search_timeline_and_refulfil(client, runtime, worker):
    with runtime.db.session_scope() as s:
        factories.program(s)
    post_stripe(client, checkout(cs="cs_dash_2", pi="pi_dash_2", student="stu_dash"))
    drain(runtime)
    csrf = login(client)
    for q in ("stu_dash", "cs_dash_2", "pi_dash_2"):
        assert "cs_dash_2" in client.get("/admin/", query_string={"q": q}).get_data(True)
    assert "No enrollments match" in client.get("/admin/", query_string={"q": "stu_nobody"}).get_data(True)
    with runtime.db.session_scope() as s:
        progress = s.scalars(select(StudentCourseProgress)).all()
        enrollment_id = progress[0].enrollment_id
        s.delete(progress[-1])  # a step lost to a past bug
    page = client.get(f"/admin/ui/enrollments/{enrollment_id}").get_data(True)
    assert "checkout.session.completed (processed)" in page  # the purchase event on the timeline
    assert "enrollment" in page and "→ active" in page
    response = client.post(f"/admin/ui/enrollments/{enrollment_id}/refulfill", data={"csrf_token": csrf},
                           follow_redirects=True)
    assert "re-fulfilled: progress_created 1" in response.get_data(True)
    with runtime.db.session_scope() as s:
        assert len(s.scalars(select(StudentCourseProgress)).all()) == 3
    again = client.post(f"/admin/ui/enrollments/{enrollment_id}/refulfill", data={"csrf_token": csrf},
                        follow_redirects=True)
    assert "nothing was missing" in again.get_data(True)


def test_an_enrollment_page_is_that_enrollment_even_when_a_student_id_is_its_number(client, runtime):
    """Before: the page's heading and its Revoke / Refund / Re-fulfil forms came from a search by the id, which
    also matches student ids: the newest enrollment of student "<id>" was shown and acted on instead."""
    with runtime.db.session_scope() as s:
        program = factories.program(s)
        first = factories.enrollment(s, factories.student(s, id="stu_first"), program, session_id="cs_first")
        other = factories.enrollment(s, factories.student(s, id=str(first.id), email="n@example.test"), program,
                                     session_id="cs_other")
        first_id, other_id = first.id, other.id
    assert other_id != first_id
    login(client)
    page = client.get(f"/admin/ui/enrollments/{first_id}").get_data(True)
    assert f"<h1>Enrollment {first_id}: " in page and ">stu_first</a>" in page
    assert f"/admin/ui/enrollments/{first_id}/revoke" in page
    assert f"/admin/ui/enrollments/{other_id}/" not in page


def test_dead_outbox_message_retry(client, runtime):
    with runtime.db.session_scope() as s:
        s.add(OutboxMessage(dedupe_key="k1", channel=OutboxChannel.PLATFORM, topic="enrollment.created",
                            payload={"type": "enrollment.created", "data": {}}, status=OutboxStatus.DEAD,
                            attempts=8, last_error="platform answered HTTP 500"))
    csrf = login(client)
    home = client.get("/admin/").get_data(True)
    assert "platform answered HTTP 500" in home
    with runtime.db.session_scope() as s:
        message_id = s.scalar(select(OutboxMessage.id))
    response = client.post(f"/admin/ui/outbox/{message_id}/retry", data={"csrf_token": csrf}, follow_redirects=True)
    assert f"Message {message_id} is pending" in response.get_data(True)
    with runtime.db.session_scope() as s:
        message = s.get(OutboxMessage, message_id)
        assert (message.status, message.attempts) == (OutboxStatus.PENDING, 0)
    assert "relay_outbox" in {m.actor_name for m in _queued(runtime, "outbox")}


def _queued(runtime, queue):
    from dramatiq import Message

    q = runtime.broker.queues[queue]
    return [Message.decode(raw) for raw in list(q.queue)]


def test_dashboard_shows_queue_depths_of_the_embedded_broker(client, runtime):
    runtime.actors["process_inbox_event"].send(999_999)
    runtime.actors["process_inbox_event"].send_with_options(args=(999_998,), delay=60_000)
    login(client)
    home = client.get("/admin/").get_data(True)
    row = re.search(r"<tr><td>inbox</td>(.*?)</tr>", home, re.S).group(1)
    assert re.findall(r'class="num">(\d+)<', row) == ["1", "0", "1", "0"]  # ready, in flight, delayed, dead


def test_a_broker_down_shows_on_the_home_page_without_its_hosts(client, runtime, monkeypatch):
    from ingress import dashboard

    def down(broker, queues=None):
        raise ConnectionError("Error 111 connecting to redis.internal.example:6379. Connection refused.")

    monkeypatch.setattr(dashboard, "queue_depths", down)
    login(client)
    home = client.get("/admin/").get_data(True)
    assert "Broker unreachable: ConnectionError" in home and "redis.internal.example" not in home


def test_pages_cannot_be_framed_run_no_script_and_are_not_cached(client):
    for response in (client.get("/admin/login"), client.get("/admin/")):
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none' covers it
        assert response.headers["Cache-Control"] == "no-store"
    login(client)
    cookie = client.get_cookie("coursepipe_admin")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


def test_replay_all_failed_of_one_type(client, runtime, worker):
    with runtime.db.session_scope() as s:
        s.add_all([InboxEvent(source="stripe", event_id=f"evt_f{n}", type=t, payload={}, status=InboxStatus.FAILED,
                              last_error="boom", attempts=5)
                   for n, t in enumerate(["no.handler.a", "no.handler.a", "no.handler.b"])])
    csrf = login(client)
    home = client.get("/admin/").get_data(True)
    assert "no.handler.a (2)" in home and "of any type (3)" in home
    response = client.post("/admin/ui/events/replay-failed", data={"csrf_token": csrf, "type": "no.handler.a"},
                           follow_redirects=True)
    assert "2 failed event(s) of type no.handler.a queued for replay." in response.get_data(True)
    drain(runtime)
    with runtime.db.session_scope() as s:
        assert sorted((e.type, e.status.value) for e in s.scalars(select(InboxEvent))) == [
            ("no.handler.a", "ignored"), ("no.handler.a", "ignored"), ("no.handler.b", "failed")]
    assert client.post("/admin/ui/events/replay-failed", data={}).status_code == 403
