"""the subjects of erased students, whose events are pruned as they end; when a student was erased

An erasure prunes the payloads of the inbox events about the student that have ended. One still to be
applied then (pending, processing or waiting), or one about them arriving later (a redelivered checkout, a
refund of an old payment), kept its payload until retention pruned it RETENTION_DAYS after it arrived. Their
subjects are now kept, and the next retention run prunes such an event once it has ended. `student.erased_at`
lets a checkout applied after the erasure leave out the e-mail it carries.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-29 07:30:00
"""
from alembic import op
import sqlalchemy as sa

import db.types

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("student", sa.Column("erased_at", db.types.UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        "erased_subject",
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("student_id", sa.String(length=64), nullable=False),
        sa.Column("erased_at", db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subject", name=op.f("pk_erased_subject")),
    )
    op.create_index(op.f("ix_erased_subject_erased_at"), "erased_subject", ["erased_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_erased_subject_erased_at"), table_name="erased_subject")
    op.drop_table("erased_subject")
    # a plain DROP COLUMN (SQLite 3.35+): a batch copy of the table would lose its expression index
    op.drop_column("student", "erased_at")
