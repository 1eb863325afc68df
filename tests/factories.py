"""Small factories per domain, for tests. Each flushes and returns the row."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from db.enums import BundleKind, EnrollmentStatus, ProgramStatus
from db.models import (
    CourseBundleComponent,
    CourseProgram,
    CourseStep,
    CourseStepOption,
    GroupClass,
    Student,
    StudentCourseEnrollment,
    StudentCourseProgress,
)


def student(session, id="stu_1", email="stu1@example.test", **kw) -> Student:
    row = Student(id=id, email=email, name=kw.pop("name", "Student One"), timezone=kw.pop("timezone", "UTC"), **kw)
    session.add(row)
    session.flush()
    return row


def program(session, code="SFZ", steps=3, bundle=((BundleKind.PRIVATE_CREDIT, 2),), options_per_step=1,
            status=ProgramStatus.PUBLISHED, price=12000) -> CourseProgram:
    row = CourseProgram(code=code, title=f"{code} course", timezone="UTC", price_amount=price,
                        price_currency="usd", status=status)
    session.add(row)
    session.flush()
    for position in range(1, steps + 1):
        step = CourseStep(program_id=row.id, position=position, label=f"{code}-{position}", title=f"Step {position}")
        session.add(step)
        session.flush()
        for n in range(options_per_step):
            session.add(CourseStepOption(program_id=row.id, step_id=step.id,
                                         group_class_id=f"gc_{code}_{position}_{n}"))
    for kind, quantity in bundle:
        session.add(CourseBundleComponent(program_id=row.id, kind=kind, quantity=quantity))
    session.flush()
    return row


def group_class(session, id="gc_1", starts_in=timedelta(days=3), capacity=10, seats_taken=0, **kw) -> GroupClass:
    start = datetime.now(timezone.utc) + starts_in
    row = GroupClass(id=id, title=kw.pop("title", "Group class"), starts_at=start,
                     ends_at=start + timedelta(hours=1), capacity=capacity, seats_taken=seats_taken, **kw)
    session.add(row)
    session.flush()
    return row


def enrollment(session, student_row, program_row, status=EnrollmentStatus.ACTIVE, session_id="cs_test_1",
               with_progress=True) -> StudentCourseEnrollment:
    row = StudentCourseEnrollment(student_id=student_row.id, program_id=program_row.id, status=status,
                                  stripe_checkout_session_id=session_id, amount_total=program_row.price_amount,
                                  currency="usd")
    session.add(row)
    session.flush()
    if with_progress:
        for step in program_row.steps:
            session.add(StudentCourseProgress(enrollment_id=row.id, step_id=step.id))
        session.flush()
    return row
