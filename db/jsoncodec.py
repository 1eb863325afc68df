"""JSON written on the purchase fast path: orjson where it writes what the standard library means,
the standard library where orjson refuses.

orjson writes the same documents from dict, list, str, int, float, bool and None about ten times
faster (a purchase's metadata, grants and messages: ~25 µs of worker CPU). It refuses non-string
keys and integers beyond 64 bits; those are written by `json`. For values read from JSON documents
(orjson writes a float NaN as null, which jsonb could not have held anyway). Reading stays with
`json`: orjson reads an integer beyond 64 bits as a float.
"""
from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError: non-string keys, integers beyond 64 bits
        return json.dumps(value)
