"""The audit log: every admin action recorded with who, when, what and why; refused actions leave nothing."""
from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from db.enums import BundleKind, InboxStatus, OutboxChannel, OutboxStatus
from db.models import AuditEntry, InboxEvent, OutboxMessage, StudentCourseEnrollment
from tasks.admins import audit
from tasks.admins.accounts import Principal
from tests import factories
from tests.conftest import make_settings
from tests.admin_support import bearer, login_as, make_admin, make_token
from tests.tasks.purchases.payments_support import checkout, deliver
from tests.tasks.catalog.test_catalog import course


def _failed_event(db) -> int:
    with db.session_scope() as s:
        row = InboxEvent(source="platform", event_id="pev_audit", type="student.upserted", payload={},
                         status=InboxStatus.FAILED, last_error="boom")
        s.add(row)
        s.flush()
        return row.id


def _entries(client, token, **query):
    response = client.get("/admin/audit", query_string=query, headers=bearer(token))
    assert response.status_code == 200
    return response.get_json()["entries"]


def test_api_actions_are_recorded_with_who_what_and_why(client, runtime):
    db = runtime.db
    operator = make_token(db, "op@studio.test", "operator")
    owner = make_token(db, "owner@studio.test", "owner")
    inbox_id = _failed_event(db)
    assert client.post(f"/admin/events/{inbox_id}/replay", json={"reason": "fixed the mirror"},
                       headers=bearer(operator)).status_code == 202
    with db.session_scope() as s:
        factories.program(s, code="ABC", bundle=((BundleKind.GROUP_CREDIT, 1),))
    deliver(db, checkout(cs="cs_audit", pi="pi_audit", course="ABC"))
    with db.session_scope() as s:
        enrollment_id = s.scalar(select(StudentCourseEnrollment.id))
    assert client.post(f"/admin/enrollments/{enrollment_id}/refulfill", headers=bearer(operator)).status_code == 200
    assert client.put("/admin/courses/SFZ", json={**course(), "reason": "spring term"},
                      headers=bearer(owner)).status_code == 201
    assert client.delete("/admin/courses/SFZ", headers=bearer(owner)).status_code == 200

    entries = _entries(client, owner)
    assert [(e["actor"], e["role"], e["action"], e["target"], e["reason"]) for e in reversed(entries)] == [
        ("op@studio.test", "operator", "event.replay", f"inbox_event:{inbox_id}", "fixed the mirror"),
        ("op@studio.test", "operator", "enrollment.refulfill", f"enrollment:{enrollment_id}", None),
        ("owner@studio.test", "owner", "course.save", "course:SFZ", "spring term"),
        ("owner@studio.test", "owner", "course.delete", "course:SFZ", None),
    ]
    assert all(e["at"] for e in entries)
    assert entries[1]["details"] == {"change": "created"}
    only = _entries(client, operator, actor="op@studio.test", action="event.replay")
    assert [e["target"] for e in only] == [f"inbox_event:{inbox_id}"]
    assert client.get("/admin/audit?limit=0", headers=bearer(owner)).status_code == 400


def test_refused_actions_leave_no_entry(client, runtime):
    db = runtime.db
    operator = make_token(db, "op@studio.test", "operator")
    assert client.post("/admin/events/999/replay", headers=bearer(operator)).status_code == 404
    owner = make_token(db, "owner@studio.test", "owner")
    assert client.put("/admin/courses/SFZ", json={**course(), "steps": []}, headers=bearer(owner)).status_code == 400
    # publishing without a Stripe key is refused before anything is queued
    assert client.post("/admin/courses/SFZ/publish", headers=bearer(owner)).status_code in (404, 503)
    with db.session_scope() as s:
        assert s.scalar(select(AuditEntry.id)) is None


def test_dashboard_actions_are_recorded_and_listed_on_the_audit_page(client, runtime):
    db = runtime.db
    make_admin(db, "op@studio.test", "operator")
    inbox_id = _failed_event(db)
    with db.session_scope() as s:
        s.add(OutboxMessage(dedupe_key="k-audit", channel=OutboxChannel.PLATFORM, topic="enrollment.created",
                            payload={}, status=OutboxStatus.DEAD, attempts=8, last_error="down"))
        s.flush()
        message_id = s.scalar(select(OutboxMessage.id))
    csrf = login_as(client, "op@studio.test")
    assert client.post(f"/admin/ui/events/{inbox_id}/replay", data={"csrf_token": csrf,
                                                                     "reason": "retry after fix"}).status_code == 302
    assert client.post(f"/admin/ui/outbox/{message_id}/retry", data={"csrf_token": csrf}).status_code == 302
    page = client.get("/admin/ui/audit")
    assert page.status_code == 200
    html = page.get_data(True)
    assert html.count('class="audit-entry"') == 2
    assert "event.replay" in html and "retry after fix" in html and "outbox.retry" in html
    assert "op@studio.test" in html
    filtered = client.get("/admin/ui/audit?action=outbox.retry").get_data(True)
    assert filtered.count('class="audit-entry"') == 1


@pytest.fixture
def stripe_settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def test_publish_is_recorded_when_it_is_queued(stripe_settings, database):
    from coursepipe.runtime import init_runtime, reset_runtime
    from ingress.app import create_app

    runtime = init_runtime(stripe_settings, db=database)
    client = create_app(stripe_settings, runtime=runtime).test_client()
    owner = make_token(runtime.db, "owner@studio.test", "owner")
    assert client.put("/admin/courses/SFZ", json=course(), headers=bearer(owner)).status_code == 201
    assert client.post("/admin/courses/SFZ/publish", json={"reason": "term opens"},
                       headers=bearer(owner)).status_code == 202
    entries = _entries(client, owner, action="course.publish")
    reset_runtime()
    assert [(e["actor"], e["target"], e["reason"]) for e in entries] == [("owner@studio.test", "course:SFZ",
                                                                           "term opens")]


def test_an_entry_s_log_line_follows_its_commit_and_a_rollback_has_none(database, caplog):
    caplog.set_level(logging.INFO, logger="coursepipe.audit")
    ann = Principal(actor="ann@studio.test", role="operator", admin_id=7)

    def lines():
        return [r.event for r in caplog.records if r.msg == "admin action"]

    with pytest.raises(RuntimeError):
        with database.session_scope() as s:
            audit.record(session=s, principal=ann, action="outbox.retry", target="outbox:1", reason="x")
            raise RuntimeError("the action failed after its entry was written")
    with database.session_scope() as s:
        entry = audit.record(session=s, principal=ann, action="outbox.retry", target="outbox:2",
                             reason="ann@studio.test asked", log_fields={"via": "test"})
        s.flush()
        assert lines() == []  # not before the commit
    assert lines() == [{"audit_id": entry.id, "action": "outbox.retry", "target": "outbox:2", "role": "operator",
                        "admin_id": 7, "break_glass": False, "via": "test"}]  # neither the reason nor the e-mail
    with database.session_scope() as s:  # a later transaction of the same kind logs only its own
        s.scalar(select(AuditEntry.id))
    assert len(lines()) == 1


def test_savepoints_keep_or_drop_only_their_own_entries_lines(database, caplog):
    """A savepoint rolled back drops the lines of entries written in it, and only those; one released keeps
    them until the transaction's outcome (SQLAlchemy reports a savepoint's end as a commit or a rollback)."""
    caplog.set_level(logging.INFO, logger="coursepipe.audit")
    ann = Principal(actor="ann@studio.test", role="operator", admin_id=7)

    def record(s, target):
        return audit.record(session=s, principal=ann, action="outbox.retry", target=target)

    with database.session_scope() as s:
        record(s, "before")
        with s.begin_nested():
            record(s, "released")
            with s.begin_nested():
                record(s, "released, inner")
        rolled = s.begin_nested()
        record(s, "rolled back")
        rolled.rollback()
        assert [r for r in caplog.records if r.msg == "admin action"] == []  # nothing before the commit
        record(s, "after")
        kept = {e.target for e in s.scalars(select(AuditEntry))}
    logged = [r.event["target"] for r in caplog.records if r.msg == "admin action"]
    assert logged == ["before", "released", "released, inner", "after"] and set(logged) == kept
    with pytest.raises(RuntimeError):
        with database.session_scope() as s:
            with s.begin_nested():
                record(s, "released, then the transaction failed")
            raise RuntimeError("the action failed")
    assert [r.event["target"] for r in caplog.records if r.msg == "admin action"] == logged
