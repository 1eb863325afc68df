"""partial indexes of what retention has left to do: settled inbox events and ended mails not yet pruned, and
the delivery moves, each in the order the job takes them

The hourly retention job took each batch of 500 by reading every settled event, every ended message and every
delivery move older than RETENTION_DAYS, pruned or not, then sorting: its work grew with everything ever kept.
These indexes hold only the rows it still has to visit (a pruned row leaves the first two; a deleted move leaves
the third), so a batch reads its 500 rows and an idle run reads none.

As with 0012, an index that exists under the same name is kept (built beforehand with CREATE INDEX
CONCURRENTLY, docs/runbook.md), unless PostgreSQL marks it invalid: that one is dropped and built again. On
SQLite the first two are plain indexes of the same columns (its JSON has no `?`). The inbox's is left out when
0019's `ix_inbox_event_payload_to_prune`, which replaces it, was built beforehand: 0019 would drop it again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 13:40:00
"""
from alembic import op

from db.index_builds import create_index_keeping_prebuilt, replacement_prebuilt

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

EVENTS_TO_PRUNE = "status IN ('processed', 'ignored') AND NOT (payload ? 'pruned_at')"
MAILS_TO_PRUNE = "channel = 'mail' AND status IN ('sent', 'dead') AND NOT (payload ? 'pruned_at')"
DELIVERY_MOVES = "entity = 'outbox'"

# name: (table, columns, PostgreSQL predicate, SQLite predicate)
INDEXES = {
    'ix_inbox_event_to_prune': ('inbox_event', ['received_at', 'id'], EVENTS_TO_PRUNE, None),
    'ix_outbox_message_mail_to_prune': ('outbox_message', ['created_at', 'id'], MAILS_TO_PRUNE, None),
    'ix_transition_log_delivery_at': ('transition_log', ['at', 'id'], DELIVERY_MOVES, DELIVERY_MOVES),
}


REPLACED_BY = {'ix_inbox_event_to_prune': 'ix_inbox_event_payload_to_prune'}  # 0019's


def upgrade() -> None:
    for name, (table, columns, postgresql_where, sqlite_where) in INDEXES.items():
        if name in REPLACED_BY and replacement_prebuilt(REPLACED_BY[name]):
            continue
        create_index_keeping_prebuilt(name, table, columns, postgresql_where=postgresql_where, sqlite_where=sqlite_where)


def downgrade() -> None:
    for name, (table, _columns, _pg, _sqlite) in reversed(INDEXES.items()):
        op.drop_index(name, table_name=table, if_exists=name in REPLACED_BY)
