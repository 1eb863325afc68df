"""A course with more holding enrollments than one statement can carry parameters (65,535) can still be
edited: the what-if counts them in the database and reads at most `MAX_LISTED` of them, the save writes a new
step's progress rows and the old bundle's records in set-based statements."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from db.models import StudentCourseProgress
from tasks.catalog import changes
from tasks.catalog import services as catalog
from tests import factories
from tests.tasks.catalog.test_changes import current

pytestmark = pytest.mark.postgres

MANY = 70_000  # over 65,535: an id list in an IN (…) could not be sent at all


def _many_holders(database) -> None:
    with database.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2)
        s.execute(sa.text(
            "INSERT INTO student (id, email, created_at, updated_at)"
            " SELECT 'stu_m' || g, 'm' || g || '@example.test', now(), now() FROM generate_series(1, :n) g"),
            {"n": MANY})
        # every second one bought before the bundle was recorded on enrollments (no key, or null)
        s.execute(sa.text(
            "INSERT INTO student_course_enrollment (student_id, program_id, status, stripe_checkout_session_id,"
            " amount_total, currency, amount_refunded, fulfilment_metadata, activated_at, created_at, updated_at)"
            " SELECT 'stu_m' || g, :p, 'active', 'cs_m' || g, 12000, 'eur', 0,"
            " CASE WHEN g % 4 = 0 THEN '{}'::jsonb WHEN g % 4 = 2 THEN jsonb_build_object('bundle', null)"
            " ELSE jsonb_build_object('bundle', '[]'::jsonb) END, now(), now(), now()"
            " FROM generate_series(1, :n) g"), {"n": MANY, "p": program.id})
        s.execute(sa.text(
            "INSERT INTO student_course_progress (enrollment_id, step_id, status, skipped_ahead, created_at, updated_at)"
            " SELECT e.id, st.id, 'unbooked', false, now(), now() FROM student_course_enrollment e"
            " JOIN course_step st ON st.program_id = e.program_id WHERE e.program_id = :p"), {"p": program.id})


def test_a_course_with_more_holders_than_a_statement_takes_parameters_gets_a_step_and_a_bundle(pg_database):
    _many_holders(pg_database)
    data = current(pg_database)
    data["steps"].append({"label": "SFZ-3", "title": "Added", "options": []})
    data["bundle"] = [{"kind": "private_credit", "quantity": 3}]
    with pg_database.session_scope() as s:
        answer = changes.course_change(session=s, course=catalog.parse_course(data, code="SFZ")).as_dict()
    added = next(step for step in answer["steps"] if step["label"] == "SFZ-3")
    assert (added["change"], added["enrollments"]) == ("added", MANY)
    assert answer["summary"]["enrollments_affected"] == MANY and answer["would_apply"]
    assert answer["bundle"]["records_written"] == MANY // 2
    assert len(answer["enrollments"]) == changes.MAX_LISTED

    with pg_database.session_scope() as s:
        catalog.save_course(session=s, course=catalog.parse_course(data, code="SFZ"))
    with pg_database.session_scope() as s:
        step_id = s.scalar(sa.text("SELECT id FROM course_step WHERE label = 'SFZ-3'"))
        assert s.scalar(sa.select(sa.func.count()).select_from(StudentCourseProgress).where(
            StudentCourseProgress.step_id == step_id, StudentCourseProgress.status == "unbooked")) == MANY
        assert s.scalar(sa.text("SELECT count(*) FROM student_course_enrollment"
                                " WHERE fulfilment_metadata ->> 'bundle' IS NULL")) == 0
        assert s.scalar(sa.text("SELECT count(*) FROM student_course_enrollment"
                                " WHERE jsonb_array_length(fulfilment_metadata -> 'bundle') = 1")) == MANY // 2


def test_a_reorder_and_an_attach_over_many_holders_are_counted_once_and_listed_up_to_the_limit(pg_database):
    _many_holders(pg_database)
    data = current(pg_database)
    data["steps"] = [data["steps"][1], data["steps"][0]]  # both steps move: every holder is touched twice
    data["steps"][0]["options"].append("gc_SFZ_new")  # and may book a new class of SFZ-2 (all unbooked)
    with pg_database.session_scope() as s:
        change = changes.course_change(session=s, course=catalog.parse_course(data, code="SFZ"))
        quick = changes.course_change(session=s, course=catalog.parse_course(data, code="SFZ"), detail=False)
    answer = change.as_dict()
    assert answer["summary"] == quick.summary() == {"steps_changed": 2, "options_changed": 1,
                                                    "enrollments_affected": MANY, "blocked": 0}
    assert [len(step["students"]) for step in answer["steps"]] == [changes.MAX_LISTED] * 2
    assert answer["options"][0]["may_book"] == MANY and len(answer["options"][0]["students"]) == changes.MAX_LISTED
    listed = answer["enrollments"]
    assert len(listed) == changes.MAX_LISTED
    assert [e["enrollment_id"] for e in listed] == sorted(e["enrollment_id"] for e in listed)
    assert listed[0]["effects"] == ["step SFZ-1: position 1 → 2 (unbooked; kept)",
                                    "step SFZ-2: position 2 → 1 (unbooked; kept)",
                                    "step SFZ-2: may now book class gc_SFZ_new"]
    assert quick.enrollments == [] and all(step["students"] == [] for step in quick.steps)
