"""purchase amounts as Stripe reports them: subtotal, tax and discount beside the total

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 17:20:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("student_course_enrollment", "package_purchase")


def upgrade() -> None:
    for table in TABLES:
        # subtotal NULL: a purchase recorded before this revision (its total is what is known)
        op.add_column(table, sa.Column("amount_subtotal", sa.Integer(), nullable=True))
        op.add_column(table, sa.Column("amount_tax", sa.Integer(), server_default="0", nullable=False))
        op.add_column(table, sa.Column("amount_discount", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("amount_discount")
            batch.drop_column("amount_tax")
            batch.drop_column("amount_subtotal")
