"""The admin lists read newest first, a page at a time (`GET /admin/events`, `/admin/audit`, `/admin/stripe/drift`):
`?limit=` says how many, `?before=` (an id) asks for the rows older than it, and each answer's `next_before` is
the `before` of the next page, null on the last. Keyed on the id, a page is stable while new rows arrive."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from flask import request

from ingress.bodies import decimal
from ingress.errors import ApiError

Row = TypeVar("Row")
MAX_LIMIT = 500  # rows a page may ask for


@dataclass(frozen=True)
class Page:
    limit: int
    before: int | None


def limit_arg(*, default: int, maximum: int = MAX_LIMIT) -> int:
    """`?limit=`: 1 to `maximum`, `default` when absent or empty; a 400 `invalid_limit` otherwise."""
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = decimal(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {maximum}")
    return limit


def page_args(*, default: int) -> Page:
    """`?limit=` (`limit_arg`) and `?before=` (a positive id); a 400 otherwise."""
    limit = limit_arg(default=default)
    raw = request.args.get("before")
    if raw is None or raw == "":
        return Page(limit, None)
    try:
        before = decimal(raw)
    except ValueError:
        before = 0
    if before < 1:
        raise ApiError(400, "invalid_before", "before must be a positive integer: the next_before of a page")
    return Page(limit, before)


def read_page(page: Page, read: Callable[[int, int | None], Sequence[Row]]) -> tuple[list[Row], int | None]:
    """`read(limit, before)` asked for one row more than the page holds: the page, and the next page's `before`
    (the id of the page's oldest row when an older one exists, else None)."""
    rows = list(read(page.limit + 1, page.before))
    shown = rows[:page.limit]
    return shown, (shown[-1].id if len(rows) > page.limit else None)  # type: ignore[attr-defined]
