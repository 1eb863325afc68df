"""JSON written on the purchase fast path: orjson where it writes what the standard library means,
the standard library where orjson refuses.

orjson writes the same documents from dict, list, str, int, float, bool and None about ten times
faster (docs/performance.md has the figures). What orjson refuses —
non-string keys, integers beyond 64 bits — or would write where `json` refuses — datetimes,
dataclasses, subclasses of str/int/dict/list such as enums (passed through here) — is left to
`json`, which writes it or raises as before. Meant for values read from JSON documents: orjson
still writes a float NaN as null and a UUID as a string, neither of which occurs there. Reading
stays with `json`: orjson reads an integer beyond 64 bits as a float.
"""
from __future__ import annotations

import json
from typing import Any

import orjson

_LIKE_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_LIKE_JSON).decode()
    except TypeError:  # orjson.JSONEncodeError: non-string keys, integers beyond 64 bits
        return json.dumps(value)
