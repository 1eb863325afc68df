"""A refund processed before a booking's cancellation or attendance: the final state does not depend on the order."""
from __future__ import annotations

import pytest

from db.enums import ProgressStatus
from db.models import StudentCourseEnrollment
from tasks.enrollments.services import revoke
from tests.tasks.bookings_support import attendance, booking_cancelled, booking_created, deliver, progress, world


def _revoke(database, w):
    with database.session_scope() as s:
        revoke(session=s, enrollment=s.get(StudentCourseEnrollment, w.enrollment_id), cause="refund:re_1",
               reason="refunded")


def _history(database, w, order, outcome_event):
    deliver(database, booking_created("bk_1", w.option(1), step_id=w.step_ids[0]))
    for step in order:
        result = _revoke(database, w) if step == "revoke" else deliver(database, outcome_event)
        assert result is None or result.outcome.value == "processed", result


@pytest.mark.parametrize("order", [("outcome", "revoke"), ("revoke", "outcome")])
@pytest.mark.parametrize("outcome,expected", [
    ("attended", ProgressStatus.COMPLETED),  # an attended class stays on record
    ("no_show", None),  # missed, then cancelled by the revocation / cancelled, the no-show changes nothing
    ("cancel", ProgressStatus.CANCELLED),
])
def test_revocation_and_booking_outcome_in_either_order(database, order, outcome, expected):
    w = world(database)
    event = booking_cancelled("bk_1") if outcome == "cancel" else attendance("bk_1", outcome)
    _history(database, w, order, event)
    status = progress(database, w, 1)["status"]
    if expected is None:  # missed is an open step: the revocation cancels it; cancelled stays cancelled
        expected = ProgressStatus.CANCELLED
    assert status == expected
    # the same outcome again, as a new platform event (a re-send with a fresh id), changes nothing
    deliver(database, {**event, "id": event["id"] + "-again"})
    assert progress(database, w, 1)["status"] == expected
