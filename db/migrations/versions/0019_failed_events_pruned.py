"""retention prunes failed inbox events too: the partial index of what it has left to do holds them

A `failed` event kept its raw payload for ever (retention pruned only `processed` and `ignored` ones), though
RETENTION_DAYS bounds how long raw payloads are kept. Retention now prunes a failed event too once older than
RETENTION_DAYS (it can no longer be replayed), and finds it through `ix_inbox_event_payload_to_prune`, 0014's
`ix_inbox_event_to_prune` with `failed` in its predicate, which it replaces.

As with 0014, an index that exists under the new name is kept (built beforehand with CREATE INDEX
CONCURRENTLY, docs/runbook.md), unless PostgreSQL marks it invalid: that one is dropped and built again. On
SQLite it is a plain index of the same columns (its JSON has no `?`). Built beforehand, it also stops 0014 building
the index it replaces; dropping that one where it exists holds off reads and writes of the inbox until the
upgrade commits (the runbook says how to drop it beforehand).

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29 01:20:00
"""
from alembic import op

from db.index_builds import create_index_keeping_prebuilt

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

EVENTS_TO_PRUNE = "status IN ('processed', 'ignored', 'failed') AND NOT (payload ? 'pruned_at')"
SETTLED_EVENTS_TO_PRUNE = "status IN ('processed', 'ignored') AND NOT (payload ? 'pruned_at')"  # 0014's


def upgrade() -> None:
    create_index_keeping_prebuilt('ix_inbox_event_payload_to_prune', 'inbox_event', ['received_at', 'id'],
                                  postgresql_where=EVENTS_TO_PRUNE)
    op.drop_index('ix_inbox_event_to_prune', table_name='inbox_event', if_exists=True)


def downgrade() -> None:
    create_index_keeping_prebuilt('ix_inbox_event_to_prune', 'inbox_event', ['received_at', 'id'],
                                  postgresql_where=SETTLED_EVENTS_TO_PRUNE)
    op.drop_index('ix_inbox_event_payload_to_prune', table_name='inbox_event')
