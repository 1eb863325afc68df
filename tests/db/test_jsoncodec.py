"""db.jsoncodec: orjson's speed without changing what a written document means."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from db import jsoncodec

class Kind(str, enum.Enum):
    PRIVATE = "private"


@dataclass
class Point:
    x: int
    y: int


SAME = [
    {"id": "evt_1", "data": {"object": {"amount_total": 12000, "metadata": {"course_code": "YOGA"}}}},
    [1, -2.5, 0.1, 1e-7, True, False, None, "", "é ☃ \n \" \\ \u0000 \u2028"],
    {"nested": [[[]], {}], "float": 1.0, "big": 2**63 - 1, "neg": -(2**63)},
]


@pytest.mark.parametrize("value", SAME)
def test_writes_what_the_standard_library_means(value):
    assert json.loads(jsoncodec.dumps(value)) == value == json.loads(json.dumps(value))


def test_what_orjson_refuses_is_written_by_the_standard_library():
    huge = 123456789012345678901234567890
    assert jsoncodec.dumps({"n": huge}) == json.dumps({"n": huge})
    assert jsoncodec.dumps({1: "a"}) == json.dumps({1: "a"}) == '{"1": "a"}'
    for refused in (object(), datetime(2026, 1, 1, tzinfo=timezone.utc), Point(1, 2)):
        with pytest.raises(TypeError):
            jsoncodec.dumps({"value": refused})  # json refuses these: the caller's error, as before
    assert json.loads(jsoncodec.dumps({"kind": Kind.PRIVATE})) == json.loads(json.dumps({"kind": Kind.PRIVATE})) \
        == {"kind": "private"}


def test_jsonb_holds_the_same_value_either_way(pg_database):
    value = {"a": [1, 2.5, "é", None], "n": 2**63 - 1, "s": "line\nbreak \u2028"}
    with pg_database.engine.connect() as conn:
        driver = conn.connection.driver_connection
        row = driver.execute("SELECT %s::jsonb = %s::jsonb, %s::jsonb",
                             (jsoncodec.dumps(value), json.dumps(value), jsoncodec.dumps(value))).fetchone()
    assert row == (True, value)
