"""the Stripe request a checkout's Idempotency-Key first built, sent again when the same request comes again

A keyed checkout request sent again (a retried POST) rebuilt its Stripe request from the database: when the
buyer's e-mail had arrived meanwhile, or the course's price had changed, the request differed, so did the key
sent to Stripe (a digest of the caller's key with the request), and Stripe made a second Checkout Session. The
request built the first time is now kept with the key and sent again. Rows bound before keep NULL and build it
anew, as before.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-29 13:10:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # a plain ADD COLUMN, NULL for the rows there (no table copy on SQLite, no rewrite on PostgreSQL)
    op.add_column("checkout_key", sa.Column("stripe_request", JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("checkout_key", "stripe_request")
