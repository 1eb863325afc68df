"""a partial index of the pending platform events, in the order the relay claims them

The relay claims each channel's due rows on its own, so that a backlog of mail (a slow mail server, a reminder
run) does not hold the platform's events back; the platform's share is found through this index instead of by
reading past every due mail.

As with 0012, an index that exists under the same name is kept (built beforehand with CREATE INDEX
CONCURRENTLY, docs/runbook.md), unless PostgreSQL marks it invalid: that one is dropped and built again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28 11:00:00
"""
from alembic import op

from db.index_builds import create_index_keeping_prebuilt

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

NAME = 'ix_outbox_message_platform_pending'
PLATFORM_PENDING = "status = 'pending' AND channel = 'platform'"


def upgrade() -> None:
    create_index_keeping_prebuilt(NAME, 'outbox_message', ['next_attempt_at', 'id'], postgresql_where=PLATFORM_PENDING,
                                  sqlite_where=PLATFORM_PENDING)


def downgrade() -> None:
    op.drop_index(NAME, table_name='outbox_message')
