"""what a partial refund claims of each lot, kept for credits that come back to the lot later

A partial refund revokes a share of each lot of its purchase, as far as the lot still holds credits. A lot
spent when the refund came gave less than its share; a booking cancelled within policy afterwards gave the
credit back usable, where delivered the other way round the refund took it. The share is now kept, and a
credit coming back to the lot pays what is still owed.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29 00:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "credit_share",
        sa.Column("grant_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("cause", sa.String(length=128), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["grant_id"], ["credit_ledger_entry.id"],
                                name=op.f("fk_credit_share_grant_id_credit_ledger_entry")),
        sa.PrimaryKeyConstraint("grant_id", "cause", name=op.f("pk_credit_share")),
    )


def downgrade() -> None:
    op.drop_table("credit_share")
