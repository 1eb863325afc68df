"""a checkout request's Idempotency-Key, bound to the request it first came with

The same key sent again with another request made another Checkout Session (the key sent to Stripe is a digest
of the caller's key with the request). It is now refused, as Stripe refuses its own keys, for 24 hours.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29 00:40:00
"""
from alembic import op
import sqlalchemy as sa
import db.types

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkout_key",
        sa.Column("request_key", sa.String(length=255), nullable=False),
        sa.Column("request_digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_key", name=op.f("pk_checkout_key")),
    )
    op.create_index("ix_checkout_key_created_at", "checkout_key", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_checkout_key_created_at", table_name="checkout_key")
    op.drop_table("checkout_key")
