"""outbox_message.status `expired`: a mail held up past its expiry is not a failure

A mail whose context's `expires_at` had passed when its turn came (a step reminder once its class had started,
SMTP down meanwhile) ended `dead`, among the failures: counted and alerted on as dead, listed for an admin, and
brought back by a bulk retry only to die again. It now ends `expired`. The rows that ended so before (`dead`,
their last error "expired at …") become `expired` too.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-29 12:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

CONSTRAINT = "ck_outbox_message_outbox_status"
BEFORE = ("pending", "sending", "sent", "dead")
AFTER = (*BEFORE, "expired")


def _allow(statuses: tuple[str, ...]) -> None:
    # SQLite cannot alter a constraint: batch mode copies the table with the new one
    with op.batch_alter_table("outbox_message") as batch:
        batch.drop_constraint(batch.f(CONSTRAINT), type_="check")
        batch.create_check_constraint(batch.f(CONSTRAINT), sa.column("status").in_(statuses))


def upgrade() -> None:
    _allow(AFTER)
    op.execute("UPDATE outbox_message SET status = 'expired' WHERE status = 'dead' AND last_error LIKE 'expired at %'")


def downgrade() -> None:
    op.execute("UPDATE outbox_message SET status = 'dead' WHERE status = 'expired'")
    _allow(BEFORE)
