"""The state machines of the domain: one table of allowed moves per entity.

A re-applied move is a no-op (`StateMachine.move` returns False); an illegal one raises
`IllegalTransition` (a permanent error: recorded on the event, never retried).
"""
from __future__ import annotations

from db.enums import (
    BookingStatus,
    DisputeStatus,
    EnrollmentStatus,
    InboxStatus,
    OutboxStatus,
    ProgressStatus,
    PurchaseStatus,
    RefundStatus,
)
from tasks.state import StateMachine

ENROLLMENT = StateMachine(
    "enrollment",
    {
        EnrollmentStatus.PENDING: frozenset({EnrollmentStatus.ACTIVE, EnrollmentStatus.FAILED, EnrollmentStatus.REVOKED}),
        EnrollmentStatus.ACTIVE: frozenset({EnrollmentStatus.SUSPENDED, EnrollmentStatus.REVOKED, EnrollmentStatus.COMPLETED}),
        EnrollmentStatus.SUSPENDED: frozenset({EnrollmentStatus.ACTIVE, EnrollmentStatus.REVOKED}),
        EnrollmentStatus.COMPLETED: frozenset({EnrollmentStatus.REVOKED, EnrollmentStatus.SUSPENDED, EnrollmentStatus.ACTIVE}),  # ACTIVE: a completed step reopened
        EnrollmentStatus.FAILED: frozenset({EnrollmentStatus.ACTIVE}),  # a later successful payment for the same session
        EnrollmentStatus.REVOKED: frozenset({EnrollmentStatus.ACTIVE}),  # only an admin's reinstatement
    },
)

PROGRESS = StateMachine(
    "progress",
    {
        # MISSED: a step its class's cancellation reopened, whose booking had been cancelled outside policy before
        # (that cancel delivered after the class's): as in order, the step was missed
        ProgressStatus.UNBOOKED: frozenset({ProgressStatus.BOOKED, ProgressStatus.CANCELLED, ProgressStatus.MISSED}),
        ProgressStatus.BOOKED: frozenset({ProgressStatus.UNBOOKED, ProgressStatus.COMPLETED, ProgressStatus.MISSED, ProgressStatus.CANCELLED}),
        ProgressStatus.MISSED: frozenset({ProgressStatus.BOOKED, ProgressStatus.CANCELLED}),  # a missed step may be booked again
        ProgressStatus.COMPLETED: frozenset(),  # attended steps stay on record, even after a refund
        # a step deactivated by a revocation whose class was attended anyway (the refund was processed
        # before the attendance): the attendance is recorded, whatever order the two arrived in
        # an admin's reinstatement of a revoked enrollment reopens its cancelled steps (booked when the
        # step's booking still stands, missed when it ended as a no-show or a cancel outside policy)
        ProgressStatus.CANCELLED: frozenset({ProgressStatus.COMPLETED, ProgressStatus.UNBOOKED, ProgressStatus.BOOKED,
                                             ProgressStatus.MISSED}),
    },
)

BOOKING = StateMachine(
    "booking",
    {
        BookingStatus.ACTIVE: frozenset({BookingStatus.CANCELLED, BookingStatus.ATTENDED, BookingStatus.NO_SHOW}),
        BookingStatus.ATTENDED: frozenset(),
        BookingStatus.NO_SHOW: frozenset(),
        BookingStatus.CANCELLED: frozenset(),
        BookingStatus.REJECTED: frozenset(),
    },
)

OUTBOX = StateMachine(
    "outbox",
    {
        # EXPIRED from PENDING: a step reminder whose class moved or was cancelled before it was sent (reminders.class_changed)
        OutboxStatus.PENDING: frozenset({OutboxStatus.SENDING, OutboxStatus.SENT, OutboxStatus.DEAD, OutboxStatus.EXPIRED}),
        OutboxStatus.SENDING: frozenset({OutboxStatus.SENT, OutboxStatus.PENDING, OutboxStatus.DEAD, OutboxStatus.EXPIRED}),
        OutboxStatus.DEAD: frozenset({OutboxStatus.PENDING, OutboxStatus.SENT}),  # an admin's Retry; a slow attempt that got through after all
        OutboxStatus.EXPIRED: frozenset({OutboxStatus.SENT}),  # never retried: only a slow attempt that got through after all
        OutboxStatus.SENT: frozenset(),
    },
)

PACKAGE_PURCHASE = StateMachine(
    "package_purchase",
    {
        PurchaseStatus.PENDING: frozenset({PurchaseStatus.PAID, PurchaseStatus.FAILED, PurchaseStatus.REFUNDED}),
        PurchaseStatus.FAILED: frozenset({PurchaseStatus.PAID}),  # a later successful payment for the same session
        PurchaseStatus.PAID: frozenset({PurchaseStatus.REFUNDED}),
        PurchaseStatus.REFUNDED: frozenset(),
    },
)

# Stripe's refund statuses. A refund that went through may still fail later; failed and canceled are final.
REFUND = StateMachine(
    "refund",
    {
        RefundStatus.PENDING: frozenset({RefundStatus.REQUIRES_ACTION, RefundStatus.SUCCEEDED, RefundStatus.FAILED,
                                         RefundStatus.CANCELED}),
        RefundStatus.REQUIRES_ACTION: frozenset({RefundStatus.PENDING, RefundStatus.SUCCEEDED, RefundStatus.FAILED,
                                                 RefundStatus.CANCELED}),
        RefundStatus.SUCCEEDED: frozenset({RefundStatus.FAILED, RefundStatus.CANCELED}),
        RefundStatus.FAILED: frozenset(),
        RefundStatus.CANCELED: frozenset(),
    },
)

DISPUTE = StateMachine(
    "dispute",
    {
        DisputeStatus.OPEN: frozenset({DisputeStatus.WON, DisputeStatus.LOST}),
        DisputeStatus.WON: frozenset(),  # a closed dispute never reopens
        DisputeStatus.LOST: frozenset(),
    },
)

# Inbox rows: far too many to log each move; the table still guards every change of status.
INBOX = StateMachine(
    "inbox_event",
    {
        InboxStatus.PENDING: frozenset({InboxStatus.PROCESSING, InboxStatus.PROCESSED, InboxStatus.IGNORED,
                                        InboxStatus.WAITING, InboxStatus.FAILED}),
        InboxStatus.PROCESSING: frozenset({InboxStatus.PENDING, InboxStatus.PROCESSED, InboxStatus.IGNORED,
                                           InboxStatus.WAITING, InboxStatus.FAILED}),
        InboxStatus.WAITING: frozenset({InboxStatus.PENDING, InboxStatus.FAILED}),  # woken; or given up on
        InboxStatus.FAILED: frozenset({InboxStatus.PENDING}),  # an admin's replay
        InboxStatus.IGNORED: frozenset({InboxStatus.PENDING}),  # an admin's replay
        InboxStatus.PROCESSED: frozenset(),
    },
    logged=False,
)
