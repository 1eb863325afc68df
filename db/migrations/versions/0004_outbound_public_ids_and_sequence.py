"""outbound messages: a random public id (event id, Message-ID) and a per-enrollment sequence

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 16:40:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("outbox_message", sa.Column("public_id", sa.String(length=32), nullable=True))
    op.add_column("outbox_message", sa.Column("sequence", sa.Integer(), nullable=True))
    op.add_column("student_course_enrollment",
                  sa.Column("last_event_sequence", sa.Integer(), server_default=sa.text("0"), nullable=False))
    # rows written before: a random id each (never the row id), their sequence in the order written
    random_hex = ("replace(gen_random_uuid()::text, '-', '')" if bind.dialect.name == "postgresql"
                  else "lower(hex(randomblob(16)))")
    op.execute(f"UPDATE outbox_message SET public_id = {random_hex}")
    op.execute("""
        UPDATE outbox_message SET sequence = (
            SELECT COUNT(*) FROM outbox_message AS earlier
            WHERE earlier.enrollment_id = outbox_message.enrollment_id AND earlier.channel = 'platform'
              AND earlier.id <= outbox_message.id)
        WHERE channel = 'platform' AND enrollment_id IS NOT NULL""")
    op.execute("""
        UPDATE student_course_enrollment SET last_event_sequence = COALESCE((
            SELECT MAX(sequence) FROM outbox_message WHERE outbox_message.enrollment_id = student_course_enrollment.id
        ), 0)""")
    op.execute("UPDATE outbox_message SET sequence = 1 WHERE channel = 'platform' AND enrollment_id IS NULL")
    with op.batch_alter_table("outbox_message") as batch:
        batch.alter_column("public_id", existing_type=sa.String(length=32), nullable=False)
        batch.create_unique_constraint(batch.f("uq_outbox_message_public_id"), ["public_id"])
    op.create_index("uq_outbox_message_enrollment_sequence", "outbox_message", ["enrollment_id", "sequence"],
                    unique=True, sqlite_where=sa.text("sequence IS NOT NULL"),
                    postgresql_where=sa.text("sequence IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("uq_outbox_message_enrollment_sequence", table_name="outbox_message")
    with op.batch_alter_table("outbox_message") as batch:
        batch.drop_constraint("uq_outbox_message_public_id", type_="unique")
        batch.drop_column("sequence")
        batch.drop_column("public_id")
    with op.batch_alter_table("student_course_enrollment") as batch:
        batch.drop_column("last_event_sequence")
