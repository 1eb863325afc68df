"""the time a class was last cancelled, kept when a newer upsert schedules it again

A class cancelled and then scheduled again by a newer `class.upserted`: when the newer upsert was applied first,
the cancellation arrived stale and was dropped whole, so the bookings it had ended stayed booked (their steps
taken, their credits spent), and a booking made before it but delivered late was accepted. The newest
cancellation's `occurred_at` is now kept on the class whatever the upsert's order; bookings made before it are
ended by it. Rows cancelled before take the time of their newest upsert, which is the cancellation's.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-29 16:00:00
"""
from alembic import op
import sqlalchemy as sa

import db.types

revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN, NULL for the rows there (no table copy on SQLite, no rewrite on PostgreSQL)
    op.add_column("group_class", sa.Column("cancelled_at", db.types.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE group_class SET cancelled_at = source_updated_at WHERE status = 'cancelled'")


def downgrade() -> None:
    op.drop_column("group_class", "cancelled_at")
