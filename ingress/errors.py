"""The error object every route answers with: {"error": {"code": …, "message": …}} with a 4xx/5xx status."""
from __future__ import annotations

import psycopg
from flask import Flask, jsonify
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from db.database import is_unique_violation
from tasks.errors import NotFound, ValidationFailed

CONFLICT_MESSAGE = "a concurrent request wrote the same record; retry"


class ApiError(Exception):
    """Raised by a view to answer with the contract's error object."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str, **more):
    """The error object; `more`: its further members (`field`, the request field at fault)."""
    response = jsonify({"error": {"code": code, "message": message, **more}})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(ValidationFailed)
    def _invalid(exc: ValidationFailed):
        return error_response(400, "validation_failed", str(exc), field=exc.field)

    @app.errorhandler(NotFound)
    def _not_found(exc: NotFound):
        return error_response(404, "not_found", str(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            409: "conflict",
            413: "payload_too_large",
            415: "unsupported_media_type",
            429: "rate_limited",
        }.get(exc.code or 500, "http_error")
        message = {413: "body exceeds 256 KiB",
                   429: "too many failed authentications from this address; wait a minute"}.get(
            exc.code or 500, exc.description or exc.name)
        response = error_response(exc.code or 500, code, message)
        # the headers the exception carries besides its own body's (a 405's Allow, a 401's WWW-Authenticate)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(IntegrityError)
    def _integrity(exc: IntegrityError):
        if not is_unique_violation(exc):  # a broken invariant: retrying would fail the same way
            app.logger.exception("integrity error")
            return error_response(500, "internal_error", "internal error; the change was not saved")
        # two requests wrote the same unique key at once (their checks both passed before either wrote):
        # nothing of this one was saved; retried, it sees the other's row and answers as the checks say
        return error_response(409, "conflict", CONFLICT_MESSAGE)

    # the database unreachable, restarting, or a transaction it rolled back (a deadlock, a lock timeout): nothing
    # of the request was saved, and the same request later will do; a 503 says so to every sender
    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(psycopg.InterfaceError)
    def _database_unavailable(exc: Exception):
        app.logger.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        response = error_response(503, "database_unavailable",
                                  "the database is not answering; nothing was saved: retry shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the request was not accepted")
