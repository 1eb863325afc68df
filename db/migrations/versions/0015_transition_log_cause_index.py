"""an index of the transition log by cause, without the delivery moves: what one event did

The dashboard's event page (GET /admin/ui/events/<id>) lists the moves logged under the event's causes; the
look-up read the whole transition log, the largest table, twice per page. Delivery moves are left out of the
index: their causes name attempts, never an event, and they are most of the log.

As with 0012, an index that exists under the same name is kept (built beforehand with CREATE INDEX
CONCURRENTLY, docs/runbook.md), unless PostgreSQL marks it invalid: that one is dropped and built again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 14:10:00
"""
from alembic import op

from db.index_builds import create_index_keeping_prebuilt

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

NAME = 'ix_transition_log_cause'
NOT_DELIVERY = "entity <> 'outbox'"


def upgrade() -> None:
    create_index_keeping_prebuilt(NAME, 'transition_log', ['cause'], postgresql_where=NOT_DELIVERY,
                                  sqlite_where=NOT_DELIVERY)


def downgrade() -> None:
    op.drop_index(NAME, table_name='transition_log')
