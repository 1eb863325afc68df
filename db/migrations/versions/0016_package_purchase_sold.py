"""what a package purchase sold: its credits' kind, quantity and validity, recorded when the purchase is made

A pending purchase (an asynchronous payment) was granted the package as it was when the payment settled, and
a re-fulfilment as it was then too: an edit of the package in between changed what an already paid purchase
received. The purchase now records what it sold; rows made before keep NULL and are granted the package as
it is (as before).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-28 22:40:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.add_column("package_purchase", sa.Column("sold", JSON, nullable=True))  # a plain ADD COLUMN on both


def downgrade() -> None:
    with op.batch_alter_table("package_purchase") as batch:
        batch.drop_column("sold")
