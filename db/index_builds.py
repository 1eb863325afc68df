"""What the migrations that build indexes share: keep an index built beforehand, rebuild an invalid one.

An operator may build a migration's indexes first with CREATE INDEX CONCURRENTLY (docs/runbook.md, "Migrations
that build indexes"), so the upgrade does not hold off writes. The migration then keeps a valid index that exists
under its name without touching its table: even `CREATE INDEX IF NOT EXISTS` would lock the table against writes
until the upgrade commits before finding the index there. One that PostgreSQL marks invalid (a concurrent build
that failed) is dropped and built again.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def _is_valid_on_postgresql(name: str) -> bool | None:
    """Whether PostgreSQL holds a valid index under `name`: None when there is none (or not on PostgreSQL)."""
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return None
    return bind.execute(sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
                        {"name": name}).scalar()


def index_to_build(name: str, table: str) -> bool:
    """Whether the migration still has to build the index `name` on `table`: not when a valid one was built
    beforehand. An invalid one left by a failed concurrent build is dropped here, to be built again."""
    valid = _is_valid_on_postgresql(name)
    if valid is False:
        op.drop_index(name, table_name=table)
    return not valid


def replacement_prebuilt(name: str) -> bool:
    """Whether the index `name`, which a later migration builds in place of one an earlier migration builds, was
    built beforehand (valid): the earlier one is then left out, as the later migration would drop it again, holding
    off reads and writes of its table until the upgrade commits."""
    return bool(_is_valid_on_postgresql(name))


def create_index_keeping_prebuilt(name: str, table: str, columns: list, *, postgresql_where: str | None = None,
                                  sqlite_where: str | None = None) -> None:
    if not index_to_build(name, table):
        return
    partial = {}
    if postgresql_where:
        partial['postgresql_where'] = sa.text(postgresql_where)
    if sqlite_where:
        partial['sqlite_where'] = sa.text(sqlite_where)
    op.create_index(name, table, columns, unique=False, if_not_exists=True, **partial)
