"""the round of the Stripe idempotency key a checkout's Idempotency-Key sends, raised when Stripe keeps a failure

A keyed checkout whose Stripe call failed with a 5xx Stripe saved under its key was answered the same failure on
every retry with that Idempotency-Key for 24 hours (Stripe replays it to the key). The round is now kept with the
key: such a failure raises it, and the key sent to Stripe is made afresh from it. Rows there take round 0, the key
they sent.

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-29 16:45:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN with a constant default (no table copy on SQLite, no rewrite on PostgreSQL 11+)
    op.add_column("checkout_key", sa.Column("stripe_key_round", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("checkout_key", "stripe_key_round")
