"""outbox_message.feed_position: the place of each committed platform event in GET /v1/events

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 16:50:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox_message", sa.Column("feed_position", sa.BigInteger(), nullable=True))
    op.create_index("uq_outbox_message_feed_position", "outbox_message", ["feed_position"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_outbox_message_feed_position", table_name="outbox_message")
    with op.batch_alter_table("outbox_message") as batch:
        batch.drop_column("feed_position")
