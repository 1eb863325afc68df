"""Re-fulfilment: POST /admin/enrollments/<id>/refulfill and `coursepipe refulfill`, creating only what is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import func, select

from db.enums import BundleKind, EnrollmentStatus, InboxStatus
from db.models import CourseStep, CreditLedgerEntry, OutboxMessage, StudentCourseEnrollment, StudentCourseProgress
from tests import factories
from tests.tasks.purchases.payments_support import charge_refunded, checkout, deliver, inbox_row, state


def _purchase(db):
    with db.session_scope() as s:
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        program_id = program.id
    deliver(db, checkout(cs="cs_1", pi="pi_1"))
    return program_id


def _enrollment_id(db) -> int:
    with db.session_scope() as s:
        return s.scalar(select(StudentCourseEnrollment.id))


def _count(db, model) -> int:
    with db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_refulfill_adds_a_step_added_later_and_nothing_else(client, runtime, admin_headers):
    db = runtime.db
    program_id = _purchase(db)
    with db.session_scope() as s:
        s.add(CourseStep(program_id=program_id, position=4, label="SFZ-4", title="Step 4"))
    enrollment_id = _enrollment_id(db)
    response = client.post(f"/admin/enrollments/{enrollment_id}/refulfill", headers=admin_headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["created"]["progress_created"] == 1 and body["created"]["credits_granted"] == {}
    assert [s["label"] for s in body["enrollment"]["steps"]] == ["SFZ-1", "SFZ-2", "SFZ-3", "SFZ-4"]
    ledger, outbox = _count(db, CreditLedgerEntry), _count(db, OutboxMessage)
    again = client.post(f"/admin/enrollments/{enrollment_id}/refulfill", headers=admin_headers).get_json()
    assert again["created"]["progress_created"] == 0 and again["created"]["credits_granted"] == {}
    assert _count(db, StudentCourseProgress) == 4 and _count(db, CreditLedgerEntry) == ledger
    assert _count(db, OutboxMessage) == outbox


def test_refulfill_restores_credits_and_steps_lost_to_a_past_bug(client, runtime, admin_headers):
    db = runtime.db
    with db.session_scope() as s:  # an enrollment written without its progress rows or bundle grants
        student = factories.student(s)
        program = factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2), (BundleKind.GROUP_CREDIT, 1)))
        enrollment_id = factories.enrollment(s, student, program, with_progress=False).id
    body = client.post(f"/admin/enrollments/{enrollment_id}/refulfill", headers=admin_headers).get_json()
    assert body["created"]["progress_created"] == 3
    assert body["created"]["credits_granted"] == {"group": 1, "private": 2}
    assert body["enrollment"]["credits"] == {"group": 1, "private": 2}
    client.post(f"/admin/enrollments/{enrollment_id}/refulfill", headers=admin_headers)
    assert state(db)["balances"] == {"group": 1, "private": 2}


def test_refulfill_answers_404_409_and_401(client, runtime, admin_headers):
    db = runtime.db
    _purchase(db)
    enrollment_id = _enrollment_id(db)
    assert client.post("/admin/enrollments/999/refulfill", headers=admin_headers).status_code == 404
    assert client.post(f"/admin/enrollments/{enrollment_id}/refulfill").status_code == 401
    deliver(db, charge_refunded())  # revoked: nothing is owed any more
    response = client.post(f"/admin/enrollments/{enrollment_id}/refulfill", headers=admin_headers)
    assert response.status_code == 409 and response.get_json()["error"]["code"] == "not_fulfillable"
    assert state(db)["balances"] == {"group": 0, "private": 0}


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": db_url}
    env.pop("REDIS_URL", None)
    return subprocess.run([sys.executable, "-c", "from coursepipe.cli import main; main()", "refulfill", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_cli_refulfill_by_enrollment_is_idempotent(runtime):
    db = runtime.db
    program_id = _purchase(db)
    with db.session_scope() as s:
        s.add(CourseStep(program_id=program_id, position=4, label="SFZ-4"))
    first = _cli(runtime.settings.database_url, "--enrollment", str(_enrollment_id(db)))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["progress_created"] == 1
    second = _cli(runtime.settings.database_url, "--enrollment", str(_enrollment_id(db)))
    assert json.loads(second.stdout)["progress_created"] == 0
    missing = _cli(runtime.settings.database_url, "--enrollment", "42")
    assert missing.returncode != 0 and "no enrollment 42" in missing.stderr
    both = _cli(runtime.settings.database_url)
    assert both.returncode != 0 and "exactly one" in both.stderr


def test_cli_refulfill_by_checkout_session_fulfils_a_failed_purchase_and_wakes_its_refund(runtime):
    db = runtime.db
    purchase = checkout(cs="cs_late", pi="pi_late", course="LATE")
    deliver(db, purchase)  # unknown course: failed
    assert inbox_row(db, purchase).status == InboxStatus.FAILED
    partial = charge_refunded(pi="pi_late", refunded=6000, refunds=[("re_l", 6000)])
    deliver(db, partial)  # waits for the purchase
    assert inbox_row(db, partial).status == InboxStatus.WAITING
    with db.session_scope() as s:  # the admin creates the course
        factories.program(s, code="LATE", bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    done = _cli(runtime.settings.database_url, "--checkout-session", "cs_late")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["kind"] == "course" and result["status"] == EnrollmentStatus.ACTIVE.value
    assert result["created_purchase"] is True and len(result["woken_events"]) == 1
    assert inbox_row(db, partial).status == InboxStatus.PROCESSED
    enrollment = state(db)["enrollments"][0]
    assert enrollment["refunded"] == 6000 and enrollment["lots"] == [("private", 2, 1)]
    again = json.loads(_cli(runtime.settings.database_url, "--checkout-session", "cs_late").stdout)
    assert again["progress_created"] == 0 and again["credits_granted"] == {}
    unknown = _cli(runtime.settings.database_url, "--checkout-session", "cs_nope")
    assert unknown.returncode != 0 and "cs_nope" in unknown.stderr


def test_refulfill_keeps_the_bundle_as_sold(client, runtime, admin_headers):
    from db.models import CourseBundleComponent

    db = runtime.db
    program_id = _purchase(db)
    with db.session_scope() as s:  # the course's bundle grows after this purchase
        s.add(CourseBundleComponent(program_id=program_id, kind=BundleKind.GROUP_CREDIT, quantity=5))
    body = client.post(f"/admin/enrollments/{_enrollment_id(db)}/refulfill", headers=admin_headers).get_json()
    assert body["created"]["credits_granted"] == {} and body["enrollment"]["credits"] == {"group": 0, "private": 2}


def test_a_step_added_to_a_completed_course_reopens_it(client, runtime, admin_headers):
    from db.enums import ProgressStatus
    from db.models import StudentCourseEnrollment as Enrollment

    db = runtime.db
    program_id = _purchase(db)
    with db.session_scope() as s:
        for row in s.scalars(select(StudentCourseProgress)):
            row.status = ProgressStatus.COMPLETED
        s.scalar(select(Enrollment)).status = EnrollmentStatus.COMPLETED
        s.add(CourseStep(program_id=program_id, position=4, label="SFZ-4"))
    body = client.post(f"/admin/enrollments/{_enrollment_id(db)}/refulfill", headers=admin_headers).get_json()
    assert body["enrollment"]["status"] == "active" and body["enrollment"]["next_step"]["label"] == "SFZ-4"
