"""The outbound platform events: the `data` of each type, as pydantic models.

They are the published contract (JSON Schema in `GET /openapi.json` as `OutboundEvent.<type>`, and
`docs/platform.md`); the writers in `tasks/` build plain dicts of these shapes, and the test suite
checks every event it makes against the schema.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from db.enums import EnrollmentStatus, ProgressStatus

Status = Literal[tuple(s.value for s in EnrollmentStatus)]  # type: ignore[valid-type]
StepStatus = Literal[tuple(s.value for s in ProgressStatus)]  # type: ignore[valid-type]
RejectionReason = Literal["no_active_enrollment", "enrollment_suspended", "unknown_course_step", "not_a_step_option",
                          "class_cancelled", "step_already_completed", "step_already_booked", "step_cancelled",
                          "no_credit"]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _About(_Data):
    enrollment_id: int = Field(description="coursepipe's enrollment id (GET /v1/students/<id>/courses)")
    student_id: str = Field(description="the platform's student id")
    course_code: str
    status: Status = Field(description="the enrollment's status after the event")


class StepRef(_Data):
    course_step_id: int
    label: str
    position: int


class EnrollmentCreated(_About):
    """A purchase was fulfilled (or re-fulfilled): the student holds the course."""

    steps: list[StepRef]
    bundle: dict[str, int] = Field(description="bundled credits granted, by credit type (group, private)")


class EnrollmentRevoked(_About):
    """A full refund or a lost dispute: access ends; open steps are cancelled, unused bundle credits removed."""

    reason: str
    active_booking_ids: list[str] = Field(description="bookings still active on the platform: cancel or keep them")


class EnrollmentSuspended(_About):
    """A dispute opened: no new step bookings until it closes."""

    reason: str


class EnrollmentReinstated(_About):
    """Every dispute closed in the studio's favour: the enrollment is active (or completed) again."""

    reason: str


class EnrollmentCompleted(_About):
    """Every step of the course is completed."""

    completed_steps: int
    completed_at: str = Field(description="ISO 8601 date-time")


class BookingRejected(_Data):
    """A `booking.created` the step guard refused; the booking should be cancelled on the platform."""

    booking_id: str
    reason: RejectionReason
    enrollment_id: int | None = Field(None, description="the enrollment whose `sequence` the event carries (the one "
                                                         "the booking was refused on); null for a student without one")


class CourseStepProgressChanged(_Data):
    """One step of an enrollment moved (booked, completed, missed, unbooked again, cancelled)."""

    enrollment_id: int
    student_id: str | None
    course_step_id: int
    label: str | None
    position: int | None
    from_status: StepStatus
    status: StepStatus
    booking_id: str | None
    at: str = Field(description="ISO 8601 date-time of the move")


OUTBOUND_DATA: dict[str, type[_Data]] = {
    "enrollment.created": EnrollmentCreated,
    "enrollment.revoked": EnrollmentRevoked,
    "enrollment.suspended": EnrollmentSuspended,
    "enrollment.reinstated": EnrollmentReinstated,
    "enrollment.completed": EnrollmentCompleted,
    "booking.rejected": BookingRejected,
    "course_step.progress_changed": CourseStepProgressChanged,
}
