"""Typed SQLAlchemy 2 models, split by domain; invariants live here as constraints, not only in code.

The plan's six tables keep the plan's names (course_program, course_step, course_step_option,
course_bundle_component, student_course_enrollment, student_course_progress). Importing this package
registers every model on `Base.metadata`.
"""
from db.models.bookings import Student, GroupClass, Booking
from db.models.catalog import CourseProgram, CourseStep, CourseStepOption, CourseBundleComponent, CreditPackage, StripePublication, StripeDrift
from db.models.enrollments import StudentCourseEnrollment, StudentCourseProgress, TransitionLog
from db.models.purchases import CheckoutKey, PackagePurchase, PaymentRefund, PaymentDispute
from db.models.ledger import CreditLedgerEntry, CreditShare
from db.models.inbox import ErasedSubject, InboxEvent
from db.models.messaging import OutboxMessage, AlertLog, ReminderLog
from db.models.jobs import JobRun
from db.models.admin import AdminAccount, AdminApiToken, AdminRefund, AdminSession, AuditEntry, WorkerHeartbeat
from db.models.base import Base, BigId, NAMING_CONVENTION, Timestamped

__all__ = [
    "Base", "BigId", "NAMING_CONVENTION", "Timestamped",
    "Student", "GroupClass", "Booking",
    "CourseProgram", "CourseStep", "CourseStepOption", "CourseBundleComponent", "CreditPackage", "StripePublication", "StripeDrift",
    "StudentCourseEnrollment", "StudentCourseProgress", "TransitionLog",
    "PackagePurchase", "PaymentRefund", "PaymentDispute", "CheckoutKey",
    "CreditLedgerEntry", "CreditShare",
    "ErasedSubject",
    "InboxEvent",
    "OutboxMessage", "AlertLog", "ReminderLog",
    "JobRun",
    "AdminAccount", "AdminApiToken", "AdminRefund", "AdminSession", "AuditEntry", "WorkerHeartbeat",
]
