"""What PostgreSQL would do with the statements a piece of code runs: their plans, with sequential and
bitmap scans turned off so that any index that can answer a statement is the one the plan shows (on a
test database's few rows the planner would otherwise scan the table, whatever the indexes)."""
from __future__ import annotations

from typing import Callable

import sqlalchemy as sa


def plans_of(database, session, work: Callable[[], object], *, naming: str, bitmap: bool = False) -> list[str]:
    """Run `work()` in `session` (PostgreSQL), then EXPLAIN each statement it ran whose text (its white space
    folded to single spaces) contains `naming`. `bitmap`: leave bitmap scans on (a GIN index is read only
    through one)."""
    captured: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if naming in " ".join(statement.split()) and not statement.lstrip().upper().startswith("EXPLAIN"):
            captured.append((statement, parameters))

    sa.event.listen(database.engine, "before_cursor_execute", keep)
    try:
        work()
    finally:
        sa.event.remove(database.engine, "before_cursor_execute", keep)
    session.execute(sa.text("SET LOCAL enable_seqscan = off"))
    if not bitmap:
        session.execute(sa.text("SET LOCAL enable_bitmapscan = off"))
    driver = session.connection().connection.driver_connection
    return ["\n".join(row[0] for row in driver.execute("EXPLAIN " + statement, parameters))
            for statement, parameters in captured]
