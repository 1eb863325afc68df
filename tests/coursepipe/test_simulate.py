"""`coursepipe simulate TYPE [--data JSON] [--url URL]`: one correctly signed test event, platform or
Stripe, sent to a running instance (a real HTTP server here, the CLI in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from db.models import InboxEvent
from tests.conftest import ADMIN_TOKEN, PLATFORM_SECRET, WEBHOOK_SECRET
from tests.netutil import http_server

CLI = [sys.executable, "-m", "coursepipe.cli", "simulate"]


@pytest.fixture
def db_backend():
    return "sqlite"  # the command talks HTTP: the instance's database does not matter here


def _run(url, *args, platform_secret=PLATFORM_SECRET):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(PLATFORM_WEBHOOK_SECRET=platform_secret, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, ADMIN_TOKEN=ADMIN_TOKEN)
    return subprocess.run([*CLI, *args, "--url", url], env=env, capture_output=True, text=True, timeout=60)


def _stored(runtime):
    with runtime.db.session_scope() as s:
        return [(r.source.value, r.type, r.payload) for r in s.scalars(select(InboxEvent).order_by(InboxEvent.id))]


@pytest.mark.parametrize("type_", ["student.upserted", "class.upserted", "booking.created", "booking.cancelled",
                                   "attendance.marked"])
def test_each_platform_type_is_signed_and_accepted(app, runtime, type_):
    with http_server(app) as url:
        done = _run(url, type_)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == 200
    [(source, stored_type, _)] = _stored(runtime)
    assert (source, stored_type) == ("platform", type_)


def test_data_is_merged_over_the_example(app, runtime):
    with http_server(app) as url:
        done = _run(url, "student.upserted", "--data", '{"student_id": "stu_42", "name": "Ada"}')
    assert done.returncode == 0, done.stderr
    [(_, _, payload)] = _stored(runtime)
    assert payload["data"]["student_id"] == "stu_42" and payload["data"]["name"] == "Ada"
    assert payload["data"]["email"] == "sim@example.test"


def test_a_stripe_checkout_is_signed_with_the_stripe_scheme(app, runtime):
    with http_server(app) as url:
        done = _run(url, "checkout.session.completed", "--data", '{"metadata": {"course_code": "ABC"}}')
    assert done.returncode == 0, done.stderr
    [(source, type_, payload)] = _stored(runtime)
    assert (source, type_) == ("stripe", "checkout.session.completed")
    assert payload["data"]["object"]["metadata"] == {"kind": "course", "course_code": "ABC"}


def test_refusals_exit_non_zero_and_say_why(app, runtime):
    with http_server(app) as url:
        unknown = _run(url, "student.upsert")
        wrong_secret = _run(url, "student.upserted", platform_secret="a-wrong-but-strong-secret-0123456789")
        bad_data = _run(url, "student.upserted", "--data", "[1]")
    assert unknown.returncode != 0 and "unknown type 'student.upsert'" in unknown.stderr
    assert wrong_secret.returncode == 1 and json.loads(wrong_secret.stdout)["status"] == 400
    assert bad_data.returncode != 0 and "JSON object" in bad_data.stderr
    assert _stored(runtime) == []


def _statuses(runtime):
    from db.models import Booking, StudentCourseEnrollment

    with runtime.db.session_scope() as s:
        return ([e.status.value for e in s.scalars(select(StudentCourseEnrollment))],
                [b.status.value for b in s.scalars(select(Booking))])


def test_the_examples_follow_ups_find_what_the_examples_before_them_made(app, runtime, worker):
    """docs/platform.md: the events are real (a checkout enrolls, a refund revokes). Before: the checkout example
    paid with a new payment intent and the booking example made a new booking id each time, while the refund and
    the cancel examples named `pi_sim` and `bk_sim`: sent by default, they found nothing, and waited until they
    failed."""
    from tests import factories
    from tests.conftest import drain

    with runtime.db.session_scope() as s:
        factories.program(s, code="SFZ", price=12000)
    with http_server(app) as url:
        for args in (["student.upserted"],
                     ["checkout.session.completed", "--data", '{"metadata": {"course_code": "SFZ"}}'],
                     ["booking.created"]):
            assert _run(url, *args).returncode == 0
        drain(runtime)
        assert _statuses(runtime) == (["active"], ["active"])
        for args in (["booking.cancelled"], ["charge.refunded"]):
            assert _run(url, *args).returncode == 0
        drain(runtime)
    assert _statuses(runtime) == (["revoked"], ["cancelled"])
    with runtime.db.session_scope() as s:
        assert {r.status.value for r in s.scalars(select(InboxEvent))} == {"processed"}
