"""index for the reminder scan: unbooked progress rows by step

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 18:05:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_student_course_progress_step_unbooked",
        "student_course_progress",
        ["step_id"],
        unique=False,
        sqlite_where=sa.text("status = 'unbooked'"),
        postgresql_where=sa.text("status = 'unbooked'"),
    )


def downgrade() -> None:
    op.drop_index("ix_student_course_progress_step_unbooked", table_name="student_course_progress")
