"""The what-if of a course edit and what the real save does to existing enrollments: progress follows the
step by id, a new step is owed to active enrollments, a detach an active booking holds is refused, a bundle
change reaches new purchases only. The dry run answers the same checks the save makes and writes nothing."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.enums import BookingStatus, EnrollmentStatus, ProgressStatus
from db.models import Booking, StudentCourseEnrollment, StudentCourseProgress
from tasks.catalog import changes
from tasks.catalog import services as catalog
from tests import factories
from tests.tasks.catalog.test_catalog import snapshot


@pytest.fixture
def sold(database):
    """SFZ published with three steps; Ann (active) booked SFZ-1 on its class; Ben completed the course."""
    with database.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=3)
        ann = factories.enrollment(s, factories.student(s, id="stu_ann", email="ann@example.test"), program,
                                   session_id="cs_ann")
        ben = factories.enrollment(s, factories.student(s, id="stu_ben", email="ben@example.test"), program,
                                   status=EnrollmentStatus.COMPLETED, session_id="cs_ben")
        first = program.steps[0]
        s.add(Booking(id="bk_ann_1", student_id="stu_ann", class_id="gc_SFZ_1_0", course_step_id=first.id,
                      enrollment_id=ann.id, status=BookingStatus.ACTIVE))
        row = s.scalar(select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == ann.id,
                                                           StudentCourseProgress.step_id == first.id))
        row.status, row.booking_id, row.group_class_id = ProgressStatus.BOOKED, "bk_ann_1", "gc_SFZ_1_0"
        for row in s.scalars(select(StudentCourseProgress).where(StudentCourseProgress.enrollment_id == ben.id)):
            row.status = ProgressStatus.COMPLETED
        return {"ann": ann.id, "ben": ben.id}


def current(database) -> dict:
    with database.session_scope() as s:
        v = catalog.course_view(s, catalog.get_program(s, "SFZ"))
    return {"title": v["title"], "timezone": v["timezone"], "price": v["price"], "bundle": v["bundle"],
            "steps": [{"label": st["label"], "title": st["title"], "options": st["options"]} for st in v["steps"]]}


def what_if(database, data) -> dict:
    with database.session_scope() as s:
        return changes.course_change(session=s, course=catalog.parse_course(data, code="SFZ")).as_dict()


def progress(database) -> set:
    with database.session_scope() as s:
        return {(r.enrollment_id, r.step_id, r.status.value, r.booking_id) for r in s.scalars(select(StudentCourseProgress))}


def test_reorder_attach_add_and_bundle_answer_who_then_apply_as_answered(database, sold):
    data = current(database)
    ids_before = progress(database)
    data["steps"] = [data["steps"][1], data["steps"][0], data["steps"][2]]  # SFZ-2 first
    data["steps"][2]["options"].append("gc_new")  # attach a class to SFZ-3
    data["steps"].append({"label": "SFZ-4", "title": "Encore", "options": []})
    data["bundle"] = [{"kind": "private_credit", "quantity": 3}]

    before = snapshot(database)
    answer = what_if(database, data)
    assert snapshot(database) == before and progress(database) == ids_before  # the what-if wrote nothing
    assert answer["would_apply"] is True and answer["blocked"] == []
    steps = {s["label"]: s for s in answer["steps"]}
    assert (steps["SFZ-2"]["change"], steps["SFZ-2"]["from_position"], steps["SFZ-2"]["to_position"]) == ("moved", 2, 1)
    assert steps["SFZ-1"]["change"] == "moved" and steps["SFZ-1"]["bookings"] == 1
    assert {st["student_id"] for st in steps["SFZ-1"]["students"]} == {"stu_ann", "stu_ben"}
    assert steps["SFZ-3"]["change"] == "unchanged"
    assert (steps["SFZ-4"]["change"], steps["SFZ-4"]["enrollments"], steps["SFZ-4"]["completed_enrollments"]) \
        == ("added", 1, 1)
    [attached] = answer["options"]
    assert (attached["class_id"], attached["step"], attached["may_book"]) == ("gc_new", "SFZ-3", 1)
    assert answer["bundle"] == {"from": "private_credit:2", "to": "private_credit:3", "applies_to": "new purchases",
                                "enrollments_keeping_theirs": 2, "records_written": 2}
    effects = {e["student_id"]: e["effects"] for e in answer["enrollments"]}
    assert "step SFZ-4: added, unbooked" in effects["stu_ann"] and "step SFZ-3: may now book class gc_new" in effects["stu_ann"]
    assert not any("SFZ-4" in e for e in effects["stu_ben"])  # completed: not seeded
    assert answer["summary"] == {"steps_changed": 3, "options_changed": 1, "enrollments_affected": 2, "blocked": 0}
    with database.session_scope() as s:  # what a save records: the same summary, without the lists
        quick = changes.course_change(session=s, course=catalog.parse_course(data, code="SFZ"), detail=False)
    assert quick.summary() == answer["summary"] and quick.enrollments == []

    with database.session_scope() as s:
        assert catalog.save_course(session=s, course=catalog.parse_course(data, code="SFZ")).change == "updated"
    after = progress(database)
    assert ids_before <= after  # every progress row kept, with its booking, by step id
    with database.session_scope() as s:
        new_step = [st for st in catalog.live_steps(s, catalog.get_program(s, "SFZ").id) if st.label == "SFZ-4"][0]
        assert after - ids_before == {(sold["ann"], new_step.id, "unbooked", None)}
        for enrollment in s.scalars(select(StudentCourseEnrollment)):
            assert [(b["kind"], b["quantity"]) for b in enrollment.fulfilment_metadata["bundle"]] \
                == [("private_credit", 2)]  # what they bought, kept
    assert what_if(database, data)["changes_anything"] is False


def test_detaching_a_class_an_active_booking_holds_is_blocked_and_refused(database, sold):
    data = current(database)
    data["steps"][0]["options"] = []  # gc_SFZ_1_0 holds Ann's booking
    answer = what_if(database, data)
    assert answer["would_apply"] is False
    [blocked] = answer["blocked"]
    assert blocked["code"] == "step_in_use" and "gc_SFZ_1_0" in blocked["message"]
    [detached] = answer["options"]
    assert detached["active_bookings"] == 1 and detached["students"][0]["booking_id"] == "bk_ann_1"
    assert answer["enrollments"] == [{"enrollment_id": sold["ann"], "student_id": "stu_ann", "status": "active",
                                      "effects": ["step SFZ-1: booking bk_ann_1 of class gc_SFZ_1_0 — detach refused"]}]
    with database.session_scope() as s:
        quick = changes.course_change(session=s, course=catalog.parse_course(data, code="SFZ"), detail=False)
    assert quick.summary() == answer["summary"] == {"steps_changed": 0, "options_changed": 1,
                                                    "enrollments_affected": 1, "blocked": 1}
    before = snapshot(database)
    with pytest.raises(catalog.StepInUse, match="gc_SFZ_1_0"):
        with database.session_scope() as s:
            catalog.save_course(session=s, course=catalog.parse_course(data, code="SFZ"))
    assert snapshot(database) == before


def test_detaching_a_class_counts_the_history_it_leaves_on_record(database, sold):
    """Ben completed SFZ-2 on gc_SFZ_2_0 and a third student missed it there; a fourth is booked on it (no
    booking row: the count is of progress past booking), and a revoked one's row is not a holder's."""
    with database.session_scope() as s:
        step = s.scalar(select(StudentCourseProgress.step_id).where(StudentCourseProgress.enrollment_id == sold["ben"])
                        .order_by(StudentCourseProgress.step_id).offset(1).limit(1))
        program = catalog.get_program(s, "SFZ")
        rows = {"ben": s.scalar(select(StudentCourseProgress).where(
            StudentCourseProgress.enrollment_id == sold["ben"], StudentCourseProgress.step_id == step))}
        for name, status, enrollment_status in (("cay", ProgressStatus.MISSED, EnrollmentStatus.ACTIVE),
                                                ("dan", ProgressStatus.BOOKED, EnrollmentStatus.ACTIVE),
                                                ("eve", ProgressStatus.COMPLETED, EnrollmentStatus.REVOKED)):
            enrollment = factories.enrollment(s, factories.student(s, id=f"stu_{name}", email=f"{name}@example.test"),
                                              program, status=enrollment_status, session_id=f"cs_{name}")
            rows[name] = s.scalar(select(StudentCourseProgress).where(
                StudentCourseProgress.enrollment_id == enrollment.id, StudentCourseProgress.step_id == step))
            rows[name].status = status
        for row in rows.values():
            row.group_class_id = "gc_SFZ_2_0"
    data = current(database)
    data["steps"][1]["options"] = []
    [detached] = what_if(database, data)["options"]
    assert (detached["class_id"], detached["change"], detached["active_bookings"], detached["history_kept"]) == (
        "gc_SFZ_2_0", "detached", 0, 2)


def test_removing_a_held_step_is_blocked_in_the_what_if_as_in_the_save(database, sold):
    data = current(database)
    data["steps"].pop()
    answer = what_if(database, data)
    assert answer["would_apply"] is False and "SFZ-3" in answer["blocked"][0]["message"]
    removed = [s for s in answer["steps"] if s["change"] == "removed"]
    assert removed[0]["enrollments"] == 2
    assert {st["student_id"] for st in removed[0]["students"]} == {"stu_ann", "stu_ben"}
    assert {e["student_id"]: e["effects"] for e in answer["enrollments"]} == {
        "stu_ann": ["step SFZ-3: would lose it (unbooked) — refused"],
        "stu_ben": ["step SFZ-3: would lose it (completed) — refused"]}
    with pytest.raises(catalog.StepInUse, match="SFZ-3"):
        with database.session_scope() as s:
            catalog.save_course(session=s, course=catalog.parse_course(data, code="SFZ"))


def test_a_new_course_affects_nobody(database):
    answer = what_if(database, {"title": "New", "price": {"amount": 100, "currency": "eur"},
                                "steps": [{"label": "N-1"}]})
    assert answer["exists"] is False and answer["would_apply"] is True and answer["enrollments"] == []


def test_a_step_added_while_a_purchase_was_fulfilled_is_given_to_it_by_the_new_steps_job(database):
    """The purchase read the course's steps before the new step committed, and the step's own insert ran before
    the enrollment committed: the enrollment lacks the step. The job gives it, and only to enrollments of that
    course made around the addition and still owed steps; a second run writes nothing."""
    from datetime import timedelta

    from db.models import CourseStep
    from db.types import utcnow

    now = utcnow()
    with database.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2)
        other = factories.program(s, code="OTH", steps=2)
        student = factories.student(s)
        raced = factories.enrollment(s, student, program, session_id="cs_raced")  # progress for the 2 steps
        revoked = factories.enrollment(s, student, program, session_id="cs_revoked",
                                       status=EnrollmentStatus.REVOKED)
        older = factories.enrollment(s, student, program, session_id="cs_older")
        elsewhere = factories.enrollment(s, student, other, session_id="cs_other")
        older.created_at = now - timedelta(days=3)
        added = CourseStep(program_id=program.id, position=3, label="SFZ-3", title="Added", created_at=now)
        s.add(added)
        s.flush()
        ids = {"raced": raced.id, "revoked": revoked.id, "older": older.id, "elsewhere": elsewhere.id,
               "step": added.id}

    def steps(enrollment_id):
        with database.session_scope() as s:
            return sorted(s.scalars(select(StudentCourseProgress.step_id)
                                    .where(StudentCourseProgress.enrollment_id == enrollment_id)))

    with database.session_scope() as s:
        assert catalog.provide_added_steps(s, now=now + timedelta(minutes=1)) == 1
    assert ids["step"] in steps(ids["raced"])
    assert all(ids["step"] not in steps(ids[k]) for k in ("revoked", "older", "elsewhere"))
    with database.session_scope() as s:
        assert catalog.provide_added_steps(s, now=now + timedelta(minutes=2)) == 0
        assert catalog.provide_added_steps(s, now=now + timedelta(hours=1)) == 0  # the step is no longer recent


def test_the_new_steps_job_after_downtime_looks_back_to_its_last_run_that_ended(database, runtime):
    """With the workers (or the scheduler) down for more than 15 minutes after a step was added, the next run
    looked only at the last 15 minutes: the enrollment that missed the step never got it."""
    from datetime import timedelta

    from db.models import CourseStep, JobRun
    from db.types import utcnow
    from workers import jobs

    now = utcnow()
    with database.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2)
        raced = factories.enrollment(s, factories.student(s), program, session_id="cs_raced")
        added = CourseStep(program_id=program.id, position=3, label="SFZ-3", title="Added",
                           created_at=now - timedelta(minutes=40))
        raced.created_at = now - timedelta(minutes=40)
        s.add(added)
        # the last run that ended began 45 minutes ago; one after it never ended
        s.add(JobRun(job="new-steps", period_key="a", runner="t", started_at=now - timedelta(minutes=45),
                     finished_at=now - timedelta(minutes=45), result={"provided": 0}))
        s.add(JobRun(job="new-steps", period_key="b", runner="t", started_at=now - timedelta(minutes=44)))
        s.flush()
        step_id, raced_id = added.id, raced.id
    with database.session_scope() as s:  # the window alone no longer reaches the step
        assert catalog.provide_added_steps(s, now=now) == 0
    jobs.provide_new_steps()
    with database.session_scope() as s:
        assert step_id in s.scalars(select(StudentCourseProgress.step_id)
                                    .where(StudentCourseProgress.enrollment_id == raced_id)).all()
