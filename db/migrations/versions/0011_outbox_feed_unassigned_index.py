"""a partial index of the platform events still without a feed position (what GET /v1/events assigns)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 03:15:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

UNASSIGNED = "channel = 'platform' AND feed_position IS NULL"


def upgrade() -> None:
    op.create_index('ix_outbox_message_feed_unassigned', 'outbox_message', ['id'], unique=False,
                    postgresql_where=sa.text(UNASSIGNED), sqlite_where=sa.text(UNASSIGNED))


def downgrade() -> None:
    op.drop_index('ix_outbox_message_feed_unassigned', table_name='outbox_message')
