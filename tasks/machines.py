"""The state machines of the domain: one table of allowed moves per entity.

A re-applied move is a no-op (`StateMachine.move` returns False); an illegal one raises
`IllegalTransition` (a permanent error: recorded on the event, never retried).
"""
from __future__ import annotations

from db.enums import BookingStatus as B
from db.enums import EnrollmentStatus as E
from db.enums import OutboxStatus as O
from db.enums import ProgressStatus as P
from tasks.state import StateMachine

ENROLLMENT = StateMachine(
    "enrollment",
    {
        E.PENDING: frozenset({E.ACTIVE, E.FAILED, E.REVOKED}),
        E.ACTIVE: frozenset({E.SUSPENDED, E.REVOKED, E.COMPLETED}),
        E.SUSPENDED: frozenset({E.ACTIVE, E.REVOKED}),
        E.COMPLETED: frozenset({E.REVOKED, E.SUSPENDED, E.ACTIVE}),  # ACTIVE: a completed step reopened
        E.FAILED: frozenset({E.ACTIVE}),  # a later successful payment for the same session
        E.REVOKED: frozenset(),
    },
)

PROGRESS = StateMachine(
    "progress",
    {
        P.UNBOOKED: frozenset({P.BOOKED, P.CANCELLED}),
        P.BOOKED: frozenset({P.UNBOOKED, P.COMPLETED, P.MISSED, P.CANCELLED}),
        P.MISSED: frozenset({P.BOOKED, P.CANCELLED}),  # a missed step may be booked again
        P.COMPLETED: frozenset(),  # attended steps stay on record, even after a refund
        # a step deactivated by a revocation whose class was attended anyway (the refund was processed
        # before the attendance): the attendance is recorded, whatever order the two arrived in
        P.CANCELLED: frozenset({P.COMPLETED}),
    },
)

BOOKING = StateMachine(
    "booking",
    {
        B.ACTIVE: frozenset({B.CANCELLED, B.ATTENDED, B.NO_SHOW}),
        B.ATTENDED: frozenset(),
        B.NO_SHOW: frozenset(),
        B.CANCELLED: frozenset(),
        B.REJECTED: frozenset(),
    },
)

OUTBOX = StateMachine(
    "outbox",
    {
        O.PENDING: frozenset({O.SENDING, O.SENT, O.DEAD}),
        O.SENDING: frozenset({O.SENT, O.PENDING, O.DEAD}),
        O.DEAD: frozenset({O.PENDING, O.SENT}),  # an admin's Retry; a slow attempt that got through after all
        O.SENT: frozenset(),
    },
)
