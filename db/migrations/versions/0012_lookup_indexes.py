"""indexes for the look-ups that read whole tables: the course report's per-step counts, a purchase's grants,
refunds and disputes, an enrollment's bookings, a student by e-mail

Each was found by a scan of its table: the report's per-step counts over every progress row, an
enrollment's or a package purchase's grants (refunds, the read API's credits, checkout-status polls), the
refunds and disputes of a purchase, an enrollment's bookings (every accepted booking, every revocation),
a student by e-mail (a buyer known only by e-mail, the dashboard's search).

An index that exists under the same name is kept (built beforehand with CREATE INDEX CONCURRENTLY,
docs/runbook.md), unless PostgreSQL marks it invalid (a concurrent build that failed): that one is
dropped and built again.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 05:30:00
"""
from alembic import op
import sqlalchemy as sa

from db.index_builds import create_index_keeping_prebuilt

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

COUNTED = "status IN ('booked', 'completed', 'missed') OR skipped_ahead"

# name: (table, columns, partial index predicate or None)
INDEXES = {
    'ix_student_course_progress_counted': ('student_course_progress', ['step_id', 'status', 'skipped_ahead'], COUNTED),
    'ix_credit_ledger_entry_enrollment_id': ('credit_ledger_entry', ['enrollment_id'], 'enrollment_id IS NOT NULL'),
    'ix_credit_ledger_entry_package_purchase_id': ('credit_ledger_entry', ['package_purchase_id'],
                                                   'package_purchase_id IS NOT NULL'),
    'ix_payment_refund_enrollment_id': ('payment_refund', ['enrollment_id'], None),
    'ix_payment_refund_package_purchase_id': ('payment_refund', ['package_purchase_id'], None),
    'ix_payment_dispute_enrollment_id': ('payment_dispute', ['enrollment_id'], None),
    'ix_booking_enrollment_step': ('booking', ['enrollment_id', 'course_step_id'], 'enrollment_id IS NOT NULL'),
    'ix_student_email_lower': ('student', [sa.text('lower(email)')], None),
}


def upgrade() -> None:
    for name, (table, columns, where) in INDEXES.items():
        create_index_keeping_prebuilt(name, table, columns, postgresql_where=where, sqlite_where=where)


def downgrade() -> None:
    for name, (table, _columns, _where) in reversed(INDEXES.items()):
        op.drop_index(name, table_name=table)
