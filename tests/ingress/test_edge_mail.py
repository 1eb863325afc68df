"""A student's email is exactly one address: a list, a display name or a header line is refused at the door,
and a stored address is never split into several recipients."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from db.models import InboxEvent
from tasks.messaging import delivery
from tasks.messaging.outbox import add_mail
from tests.signing import platform_event, platform_headers


def _post(client, email):
    raw = json.dumps(platform_event("student.upserted", {"student_id": "stu_1", "email": email,
                                                         "name": "Ann", "timezone": "UTC"})).encode()
    return client.post("/webhooks/platform", data=raw, headers=platform_headers(raw))


@pytest.mark.parametrize("email", [
    "victim@example.com,extra@evil.example",
    "victim@example.com, extra@evil.example",
    "victim@example.com;extra@evil.example",
    "Name <other@evil.example>",
    "<other@evil.example>",
    "ann@example.com\r\nBcc: other@evil.example",
    "ann@example.com\n",
    "not an address",
    "",
    "@example.com",
])
def test_anything_but_one_address_is_refused(client, runtime, email):
    response = _post(client, email)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_event" and "data.email" in error["message"]
    with runtime.db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(InboxEvent)) == 0


@pytest.mark.parametrize("email", ["ann@example.com", "ann+courses@example.test", "Ann.O@Example.ORG",
                                   "ü@exämple.de"])
def test_one_address_is_accepted(client, email):
    assert _post(client, email).status_code == 200


@pytest.mark.parametrize("stored", ["victim@example.com,extra@evil.example", "Name <other@evil.example>"])
def test_a_stored_address_is_one_recipient_never_split(database, settings, stored):
    with database.session_scope() as s:
        message_id = add_mail(session=s, template="step_reminder", recipient=stored, context={},
                              dedupe_key="one").id
    with database.session_scope() as s:
        job = delivery.claim(session=s, message_id=message_id, settings=settings.with_(smtp_url="smtp://127.0.0.1:1"))
    assert job is not None and job.recipients == (stored,)
