"""a partial index of the step reminders still to send, by the class they name (PostgreSQL)

A `class.upserted` that moves a class ends the step reminders about it that are still to send (they name the
old time). They are found by the class id in the mail's context, through this index of the pending ones only:
without it, every move read every pending mail (after an SMTP outage, the whole backlog). SQLite, the embedded
default, has no such index (it reads the pending rows through the status index).

As with 0012, an index that exists under the same name is kept (built beforehand with CREATE INDEX
CONCURRENTLY, docs/runbook.md), unless PostgreSQL marks it invalid: that one is dropped and built again. It is
left out when 0023's `ix_outbox_message_reminder_options`, which replaces it, was built beforehand: 0023 would drop
it again.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-29 04:40:00
"""
from alembic import op
import sqlalchemy as sa

from db.index_builds import create_index_keeping_prebuilt, replacement_prebuilt

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

NAME = 'ix_outbox_message_reminder_class'
REMINDER_CLASS_ID = "((payload -> 'context'::text) ->> 'class_id'::text)"  # as PostgreSQL shows it
STEP_REMINDERS_PENDING = "status = 'pending' AND topic = 'step_reminder'"
REPLACED_BY = 'ix_outbox_message_reminder_options'  # 0023's


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql' and not replacement_prebuilt(REPLACED_BY):
        create_index_keeping_prebuilt(NAME, 'outbox_message', [sa.text(REMINDER_CLASS_ID)],
                                      postgresql_where=STEP_REMINDERS_PENDING)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.drop_index(NAME, table_name='outbox_message', if_exists=True)
