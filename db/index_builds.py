"""What the migrations that build indexes share: keep an index built beforehand, rebuild an invalid one.

An operator may build a migration's indexes first with CREATE INDEX CONCURRENTLY (docs/runbook.md, "Migrations
that build indexes"), so the upgrade does not hold off writes. The migration then keeps an index that exists
under its name, unless PostgreSQL marks it invalid (a concurrent build that failed): that one is dropped and
built again.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_index_keeping_prebuilt(name: str, table: str, columns: list, *, postgresql_where: str | None = None,
                                  sqlite_where: str | None = None) -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql' and bind.execute(
            sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"), {"name": name}).scalar():
        op.drop_index(name)
    partial = {}
    if postgresql_where:
        partial['postgresql_where'] = sa.text(postgresql_where)
    if sqlite_where:
        partial['sqlite_where'] = sa.text(sqlite_where)
    op.create_index(name, table, columns, unique=False, if_not_exists=True, **partial)
