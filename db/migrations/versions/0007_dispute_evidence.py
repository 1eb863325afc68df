"""dispute evidence: the draft, its deadline, and its submission to Stripe (intent, outcome)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 17:35:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

import db.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("payment_dispute") as batch:
        batch.add_column(sa.Column("currency", sa.String(length=3), nullable=True))
        batch.add_column(sa.Column("stripe_status", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("evidence_due_by", db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("evidence", JSON, nullable=True))
        batch.add_column(sa.Column("evidence_status", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("evidence_submission_key", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("evidence_requested_at", db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("evidence_submitted_at", db.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("evidence_files", JSON, nullable=True))
        batch.add_column(sa.Column("evidence_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_dispute") as batch:
        for name in ("evidence_error", "evidence_files", "evidence_submitted_at", "evidence_requested_at",
                     "evidence_submission_key", "evidence_status", "evidence", "evidence_due_by", "stripe_status",
                     "currency"):
            batch.drop_column(name)
