"""payment_refund.status: Stripe's last word on each refund (a counted refund can fail later)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 23:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable: rows recorded before this revision were counted, which is what NULL means
    op.add_column("payment_refund", sa.Column("status", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_refund") as batch:
        batch.drop_column("status")
