"""Reading request bodies strictly: what we accept is what both databases can store.

A body is JSON in UTF-8 without a byte-order mark (RFC 8259 §8.1), with no `NaN`/`Infinity`, no
lone surrogate, no NUL character (PostgreSQL's jsonb and text hold none of these; SQLite would keep
them, so refusing them at the door keeps the two alike) and at most MAX_DEPTH levels of nesting.
Anything else is a 400 `invalid_json` naming what is wrong; nothing is stored.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import current_app, request
from werkzeug.exceptions import ClientDisconnected

from ingress.errors import ApiError
from tasks.errors import ValidationFailed

# a Stripe event nests about ten levels; deep bodies cost recursion in every reader after us
MAX_DEPTH = 64


DECIMAL = re.compile(r"-?[0-9]{1,18}")  # what a BIGINT holds, written in ASCII digits alone


def decimal(raw: str) -> int:
    """A query or form parameter's integer, written plainly: int() alone also reads `1_0`, ` 100` and digits of
    other scripts (`٣`). ValueError otherwise."""
    if not isinstance(raw, str) or not DECIMAL.fullmatch(raw):
        raise ValueError(f"{raw!r} is not an integer")
    return int(raw)


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent; one beyond a double (`1e999`) would read as Infinity."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond the numbers we keep")
    return value


def _check_strings(value: Any) -> None:
    """Walk the parsed value once (iteratively): depth, NUL characters and lone surrogates."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise ApiError(400, "invalid_json", f"body nests deeper than {MAX_DEPTH} levels")
            for key, item in node.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise ApiError(400, "invalid_json", f"body nests deeper than {MAX_DEPTH} levels")
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str):
            _check_text(node)


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise ApiError(400, "invalid_json", "body contains a NUL character (\\u0000), which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "invalid_json", "body contains a lone surrogate (\\ud800-\\udfff), "
                                            "which is not a character") from None


def parse_json(raw: bytes) -> tuple[Any, str]:
    """(value, text) of a JSON body, or ApiError 400 `invalid_json`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "body is not UTF-8 text") from None
    if text.startswith("\ufeff"):
        raise ApiError(400, "invalid_json", "body starts with a byte-order mark")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError(400, "invalid_json", f"body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise ApiError(400, "invalid_json", "body is not valid JSON") from None
    # NUL and surrogates can only arrive as \u escapes (raw ones fail above); depth needs many brackets
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        _check_strings(value)
    return value, text


try:  # what gunicorn's body reader raises for a malformed chunked body
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - gunicorn is a dependency
    _ServerParseError = OSError


def _stalled(exc: BaseException) -> bool:
    """A read that timed out, or a body that ended before its length (werkzeug wraps the server's error in
    ClientDisconnected; a malformed chunk is a parse error underneath)."""
    chain = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(e, TimeoutError) for e in chain):
        return True
    return isinstance(exc, ClientDisconnected) and exc.__cause__ is None and exc.__context__ is None


def read_body() -> bytes:
    """The raw request body, within MAX_CONTENT_LENGTH: 413 beyond it, 400 for a broken chunked body, 408 for
    one that stalls or ends before its length (a sender such as Stripe retries a 408 like any non-2xx)."""
    try:
        raw = request.get_data(cache=False)
    except (OSError, ValueError, _ServerParseError, ClientDisconnected) as exc:
        if _stalled(exc):
            raise ApiError(408, "request_timeout", "the request body did not arrive in full in time; nothing "
                                                   "was stored: send the request again") from None
        raise ApiError(400, "invalid_body", "the request body could not be read (malformed chunked encoding)") \
            from None
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    # a chunked body (no Content-Length) is read up to the limit and no further: reaching it means more
    if limit is not None and request.content_length is None and len(raw) >= limit:
        raise ApiError(413, "payload_too_large", "body exceeds 256 KiB")
    return raw


def json_value() -> Any:
    """An admin request's JSON body (strict, as above), or 400."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and (request.content_length or 0) > limit:
        raise ApiError(413, "payload_too_large", "body exceeds 256 KiB")
    value, _text = parse_json(read_body())
    return value


def json_object(*allowed: str, optional: bool = False) -> dict[str, Any]:
    """An admin request's body as a JSON object, read strictly (above), or ValidationFailed (400 `validation_failed`,
    field `body` or the unknown field). `allowed`: the only fields it may have (none given: any). `optional`: an
    empty body is `{}` (actions whose only field is an optional reason)."""
    if optional and not request.content_length and not request.headers.get("Transfer-Encoding"):
        return {}
    try:
        data = json_value()
    except ApiError as exc:
        if exc.status != 400:
            raise
        raise ValidationFailed(f"body: {exc.message}", field="body") from None
    if not isinstance(data, dict):
        raise ValidationFailed("body: must be a JSON object", field="body")
    unknown = sorted(set(data) - set(allowed)) if allowed else []
    if unknown:
        raise ValidationFailed(f"{unknown[0]}: not a field of this operation", field=unknown[0])
    return data


def checked_key(key: str | None, max_length: int) -> str | None:
    """An idempotency key (a header's, or a dashboard form's own): 400 `invalid_idempotency_key` when it is empty
    or longer than the column that keeps it."""
    if key is not None and not 1 <= len(key) <= max_length:
        raise ApiError(400, "invalid_idempotency_key", f"Idempotency-Key: 1 to {max_length} characters")
    return key


def idempotency_key(max_length: int) -> str | None:
    """The request's `Idempotency-Key` header, checked (None without one)."""
    return checked_key(request.headers.get("Idempotency-Key"), max_length)
