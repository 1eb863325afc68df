"""students erased before 0022 are erased for fulfilment too: `student.erased_at` from their `student.erase` entry

0022 added `student.erased_at`, which a checkout applied later reads to leave out the e-mail it carries, but left
it NULL for the students erased before it: to fulfilment they were not erased, and a redelivered checkout of theirs
recorded the e-mail again. A student with no e-mail whose newest `student.erase` audit entry is not older than
their last profile update (none came after the erasure, which would have brought them back) now takes that
entry's time. Their subjects are not recovered (`erased_subject`): erasing them once more keeps those too
(docs/runbook.md).

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-29 18:00:00
"""
from alembic import op

revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None

# the student's newest erasure, as the audit log has it (`coursepipe students erase` writes the entry)
ERASED = "(SELECT max(at) FROM audit_log WHERE action = 'student.erase' AND target = 'student:' || student.id)"


def upgrade() -> None:
    op.execute(f"UPDATE student SET erased_at = {ERASED} WHERE email IS NULL AND erased_at IS NULL"
               f" AND {ERASED} IS NOT NULL AND (source_updated_at IS NULL OR source_updated_at <= {ERASED})")


def downgrade() -> None:
    pass  # 0022's downgrade drops the column; until then, an erasure's time is right whichever release set it
