"""Checks every request passes before any view: what no route may hand to the database.

- Path and query parameters holding a NUL character are a 400 (PostgreSQL text holds none; SQLite
  would compare them, so both databases answer alike).
- `<int:…>` path parameters are at most 2**63 - 1, what a BIGINT (and SQLite's INTEGER) holds:
  a longer number names no row, so it is a 404 like any other missing id.
"""
from __future__ import annotations

from flask import Flask, request
from werkzeug.routing import IntegerConverter

from ingress.errors import ApiError

BIGINT_MAX = 2**63 - 1


class BoundedIntegerConverter(IntegerConverter):
    def __init__(self, map, fixed_digits: int = 0, min: int | None = None, max: int | None = BIGINT_MAX,
                 signed: bool = False) -> None:
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
DASHBOARD_ACTIONS = "/admin/ui/"


def _refuse_nul() -> None:
    # the query is parsed only when there is one (a webhook has none)
    if "\x00" in request.path or (request.query_string and any("\x00" in k or "\x00" in v
                                                               for k, v in request.args.items(multi=True))):
        raise ApiError(400, "invalid_parameter", "a path or query parameter contains a NUL character")
    # a dashboard action's form fields, which actions store. Only there: reading the form consumes the body, so
    # a webhook or JSON call sent with a form's content type (curl's default) would reach its view with an empty
    # body. The login form stores nothing, and its `next` is sanitised to a path on this site instead
    if request.mimetype in FORM_TYPES and request.path.startswith(DASHBOARD_ACTIONS) \
            and any("\x00" in k or "\x00" in v for k, v in request.form.items(multi=True)):
        raise ApiError(400, "invalid_parameter", "a form field contains a NUL character")


def install(app: Flask) -> None:
    app.url_map.converters["int"] = BoundedIntegerConverter
    app.before_request(_refuse_nul)
