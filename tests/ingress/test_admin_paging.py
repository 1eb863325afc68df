"""The admin lists a page at a time: GET /admin/events, /admin/audit and /admin/stripe/drift answer newest first,
`limit` rows, and `next_before` (null on the last page); `?before=` reads on. Before, each was cut at its limit
(the drift at 100 with no limit at all) and the rows past it could not be read."""
from __future__ import annotations

import html
import re

import pytest

from db.models import StripeDrift
from tasks.admins import audit
from tasks.admins.accounts import Principal
from tests.ingress.test_admin_events import _store
from tests.ingress.test_dashboard import login

BAD_BEFORE = ["0", "-1", "x", "1_0", "%205", "%D9%A3", "1.5", "99999999999999999999"]  # %D9%A3: an Arabic 3


def _events(db, n: int) -> list[int]:
    return [_store(db, "test.effect") for _ in range(n)]


def _audit(db, actions: list[str]) -> list[int]:
    with db.session_scope() as s:
        return [audit.record(session=s, principal=Principal(actor="ann@studio.test", role="owner"), action=action,
                             target="enrollment:1", reason="paging").id for action in actions]


def _drift(db, n: int, *, resolved: int = 0) -> list[int]:
    from db.types import utcnow

    with db.session_scope() as s:
        rows = [StripeDrift(stripe_object_id=f"prod_{i}", field="name", expected="A", actual="B",
                            resolved_at=utcnow() if i < resolved else None) for i in range(n)]
        s.add_all(rows)
        s.flush()
        return [row.id for row in rows if row.resolved_at is None]


def _read_all(client, headers, path: str, key: str, limit: int, *, before: int | None = None,
              **filters: str) -> list[list[int]]:
    """Every page of `path`, following next_before; the ids of each."""
    pages = []
    for _ in range(50):  # bounded: a list that never ends fails below
        query = {**filters, "limit": limit, **({"before": before} if before is not None else {})}
        response = client.get(path, query_string=query, headers=headers)
        assert response.status_code == 200, response.get_data(True)
        body = response.get_json()
        pages.append([row["id"] for row in body[key]])
        before = body["next_before"]
        if before is None:
            return pages
        assert before == pages[-1][-1]  # the page's oldest row
    pytest.fail(f"{path}: next_before never came back null")


def test_events_are_read_a_page_at_a_time_newest_first_each_once(client, runtime, admin_headers):
    ids = _events(runtime.db, 7)
    pages = _read_all(client, admin_headers, "/admin/events", "events", 3)
    assert pages == [ids[:3:-1], ids[3:0:-1], ids[:1]]
    # a last page that is exactly full says so: no empty page after it (6 older rows, pages of 3)
    assert _read_all(client, admin_headers, "/admin/events", "events", 3, before=ids[6]) == [ids[5:2:-1],
                                                                                                ids[2::-1]]


def test_rows_arriving_between_pages_do_not_shift_the_next_page(client, runtime, admin_headers):
    ids = _events(runtime.db, 5)
    first = client.get("/admin/events?limit=2", headers=admin_headers).get_json()
    newer = _events(runtime.db, 3)  # arrive while the reader is on page one
    second = client.get(f"/admin/events?limit=2&before={first['next_before']}", headers=admin_headers).get_json()
    assert [e["id"] for e in first["events"]] == [ids[4], ids[3]]
    assert [e["id"] for e in second["events"]] == [ids[2], ids[1]]  # not the newer ones, not page one again
    assert max(newer) > ids[4]


def test_a_filtered_list_pages_within_its_filter(client, runtime, admin_headers):
    _events(runtime.db, 2)
    actions = ["enrollment.revoke", "enrollment.reinstate", "enrollment.revoke", "enrollment.revoke",
               "enrollment.reinstate", "enrollment.revoke"]
    revokes = [i for i, action in zip(_audit(runtime.db, actions), actions) if action == "enrollment.revoke"]
    pages = _read_all(client, admin_headers, "/admin/audit", "entries", 3, action="enrollment.revoke")
    assert pages == [revokes[:0:-1], revokes[:1]]


def test_open_drift_is_read_a_page_at_a_time_and_resolved_drift_is_left_out(client, runtime, admin_headers):
    open_ids = _drift(runtime.db, 105, resolved=2)  # more than the old fixed cut of 100
    default = client.get("/admin/stripe/drift", headers=admin_headers).get_json()
    assert len(default["drift"]) == 100 and default["next_before"] == default["drift"][-1]["id"]
    pages = _read_all(client, admin_headers, "/admin/stripe/drift", "drift", 40)
    assert [len(page) for page in pages] == [40, 40, 23]
    assert [i for page in pages for i in page] == open_ids[::-1]


@pytest.mark.parametrize("path", ["/admin/events", "/admin/audit", "/admin/stripe/drift"])
def test_a_bad_before_or_limit_is_a_400_naming_it(client, runtime, admin_headers, path):
    _events(runtime.db, 1)
    for raw in BAD_BEFORE:
        response = client.get(f"{path}?before={raw}", headers=admin_headers)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_before", raw
    for raw in ["0", "501", "x", "-2"]:
        response = client.get(f"{path}?limit={raw}", headers=admin_headers)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_limit", raw
    # an id past every row is a page like any other: the rows older than it
    assert client.get(f"{path}?before=999999", headers=admin_headers).status_code == 200


def test_the_audit_page_links_to_the_older_entries_keeping_its_filter(client, runtime):
    entries = _audit(runtime.db, ["outbox.retry"] * 3 + ["event.replay"] * 102)
    login(client)
    page = client.get("/admin/ui/audit?action=event.replay").get_data(True)
    assert page.count('class="audit-entry"') == 100
    link = html.unescape(re.search(r'id="audit-older" href="([^"]+)"', page).group(1))
    assert "action=event.replay" in link and f"before={entries[5]}" in link and "limit=100" in link
    older = client.get(link).get_data(True)
    assert older.count('class="audit-entry"') == 2 and "outbox.retry" not in older
    assert 'id="audit-older"' not in older  # the last page


def test_the_cli_lists_events_a_page_at_a_time_too(database, monkeypatch):
    import json

    from click.testing import CliRunner

    from coursepipe.cli import main

    ids = _events(database, 5)
    monkeypatch.setenv("DATABASE_URL", database.url)
    result = CliRunner().invoke(main, ["events", "list", "--limit", "2", "--before", str(ids[3])])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == [ids[2], ids[1]]
    refused = CliRunner().invoke(main, ["events", "list", "--before", "0"])
    assert refused.exit_code == 2 and "--before" in refused.output


def test_the_audit_pages_keep_the_size_asked_for(client, runtime):
    entries = _audit(runtime.db, ["event.replay"] * 5)
    login(client)
    page = client.get("/admin/ui/audit?limit=2").get_data(True)
    link = html.unescape(re.search(r'id="audit-older" href="([^"]+)"', page).group(1))
    assert "limit=2" in link and f"before={entries[3]}" in link
    assert client.get(link).get_data(True).count('class="audit-entry"') == 2
