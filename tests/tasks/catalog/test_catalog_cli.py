"""`coursepipe courses import FILE` and `coursepipe courses publish CODE`, run as real processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from db.enums import ProgramStatus
from db.models import CourseProgram, CreditPackage
from tasks.catalog import services as catalog
from tests.tasks.catalog.test_catalog import course, snapshot

@pytest.fixture
def db_backend():
    """SQLite only: each process start costs a second or two; the same save path runs on PostgreSQL
    in test_catalog.py."""
    return "sqlite"


EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "courses.yaml"


def cli(db_url: str, *args: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": db_url}
    for name in ("REDIS_URL", "STRIPE_API_KEY", "STRIPE_API_BASE"):
        env.pop(name, None)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run([sys.executable, "-c", "from coursepipe.cli import main; main()", "courses", *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_import_the_example_twice_is_a_no_op(database):
    first = cli(database.url, "import", str(EXAMPLE))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["course SFZ: created", "package TEN-GROUP: created"]
    before = snapshot(database)
    second = cli(database.url, "import", str(EXAMPLE))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["course SFZ: unchanged", "package TEN-GROUP: unchanged"]
    assert snapshot(database) == before
    with database.session_scope() as s:
        view = catalog.course_view(s, catalog.get_program(s, "SFZ"))
    assert [st["label"] for st in view["steps"]] == ["SFZ-1", "SFZ-2", "SFZ-3"]
    assert view["timezone"] == "Europe/Berlin" and view["price"] == {"amount": 12000, "currency": "eur"}


def test_a_malformed_file_changes_nothing_and_names_the_first_bad_field(database, tmp_path):
    good = course(code="GOOD")
    bad = course(code="BAD")
    bad["steps"][1]["label"] = "SFZ-1"
    also_bad = course(code="WORSE", timezone="Nowhere")
    path = tmp_path / "courses.json"
    path.write_text(json.dumps([good, bad, also_bad]))
    result = cli(database.url, "import", str(path))
    assert result.returncode == 1
    assert "[1].steps[1].label" in result.stderr and "duplicate label" in result.stderr
    with database.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(CourseProgram)) == 0

    # valid shapes, but the second would remove a step enrollments have: all or nothing
    cli(database.url, "import", str(EXAMPLE))
    from tests import factories

    with database.session_scope() as s:
        factories.enrollment(s, factories.student(s), catalog.get_program(s, "SFZ"))
    before = snapshot(database)
    data = yaml.safe_load(EXAMPLE.read_text())
    data["packages"][0]["title"] = "Changed"
    data["courses"][0]["steps"].pop()
    data["courses"].insert(0, course(code="NEW"))
    path = tmp_path / "edit.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli(database.url, "import", str(path))
    assert result.returncode == 1 and "SFZ-3" in result.stderr and "nothing was imported" in result.stderr
    assert snapshot(database) == before
    with database.session_scope() as s:
        assert catalog.live_program(s, "NEW") is None
        assert s.scalar(select(CreditPackage.title)) == "Ten group classes"


def test_unparsable_file_is_a_clear_error(database, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"title": ')
    result = cli(database.url, "import", str(path))
    assert result.returncode == 1 and "not valid JSON" in result.stderr


def test_publish_in_embedded_mode_runs_in_process(database, stripe_server):
    cli(database.url, "import", str(EXAMPLE))
    result = cli(database.url, "publish", "SFZ", **stripe_server.settings_changes_env())
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["product_id"] in stripe_server.products and out["price_id"] in stripe_server.prices
    with database.session_scope() as s:
        assert catalog.get_program(s, "SFZ").status is ProgramStatus.PUBLISHED
    assert stripe_server.calls("POST", "/v1/products")[0].metadata["bundle"] == "private_credit:2,group_credit:1"
    package = cli(database.url, "publish", "--package", "TEN-GROUP", **stripe_server.settings_changes_env())
    assert package.returncode == 0, package.stderr
    assert len(stripe_server.products) == 2
    listed = cli(database.url, "list")
    assert listed.stdout.split() == ["SFZ", "published", out["product_id"], out["price_id"], "in", "sync"]


def test_publish_without_api_key_fails_clearly_and_stays_draft(database):
    cli(database.url, "import", str(EXAMPLE))
    result = cli(database.url, "publish", "SFZ")
    assert result.returncode == 1 and "STRIPE_API_KEY is not set" in result.stderr
    with database.session_scope() as s:
        assert catalog.get_program(s, "SFZ").status is ProgramStatus.DRAFT


def test_publish_with_redis_queues_the_actor(database, redis_url, redis_namespace, stripe_server):
    import redis

    cli(database.url, "import", str(EXAMPLE))
    result = cli(database.url, "publish", "SFZ", REDIS_URL=redis_url, REDIS_NAMESPACE=redis_namespace,
                 **stripe_server.settings_changes_env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"kind": "course", "code": "SFZ", "queued": True}
    messages = redis.Redis.from_url(redis_url).hvals(f"{redis_namespace}:catalog.msgs")
    assert [json.loads(m)["actor_name"] for m in messages] == ["publish_listing"]
    assert [json.loads(m)["args"] for m in messages] == [["course", "SFZ"]]
    assert stripe_server.requests == []  # the workers make the calls, not the CLI


def test_a_file_that_is_not_utf8_is_a_clear_error(database, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("title: Caf\xe9 salsa\n".encode("latin-1"))
    result = cli(database.url, "import", str(path))
    assert result.returncode == 1 and "cannot be read as UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
