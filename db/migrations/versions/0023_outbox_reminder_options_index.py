"""a GIN index of the classes the step reminders still to send list, in place of 0021's (PostgreSQL)

A step reminder lists up to three upcoming classes of its step (`options`, the one it is about first). A
`class.upserted` that moves or cancels any of them now ends the reminders still to send that list it (they
name a time, or a class, that is no longer true). They are found by containment (`@>`) through this index of
the pending ones only; 0021's index of the class a reminder is about answers nothing the new one does not (that
class is listed first), and goes. SQLite has neither (it reads the pending rows through the status index).

As with 0012 and 0021, an index that exists under the same name is kept (built beforehand with CREATE INDEX
CONCURRENTLY, docs/runbook.md), unless PostgreSQL marks it invalid: that one is dropped and built again.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-29 08:00:00
"""
from alembic import op
import sqlalchemy as sa

from db.index_builds import create_index_keeping_prebuilt, index_to_build

revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

NAME = 'ix_outbox_message_reminder_options'
REMINDER_OPTIONS = "((payload -> 'context'::text) -> 'options'::text)"  # as PostgreSQL shows it
STEP_REMINDERS_PENDING = "status = 'pending' AND topic = 'step_reminder'"
CLASS_INDEX = 'ix_outbox_message_reminder_class'  # 0021's
REMINDER_CLASS_ID = "((payload -> 'context'::text) ->> 'class_id'::text)"


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    if index_to_build(NAME, 'outbox_message'):
        # written out: Alembic's create_index drops the operator class of a labelled expression
        op.execute(f"CREATE INDEX {NAME} ON outbox_message USING gin ({REMINDER_OPTIONS} jsonb_path_ops)"
                   f" WHERE {STEP_REMINDERS_PENDING}")
    op.drop_index(CLASS_INDEX, table_name='outbox_message', if_exists=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        create_index_keeping_prebuilt(CLASS_INDEX, 'outbox_message', [sa.text(REMINDER_CLASS_ID)],
                                      postgresql_where=STEP_REMINDERS_PENDING)
        op.drop_index(NAME, table_name='outbox_message')
