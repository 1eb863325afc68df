"""Safe read-modify-write of the admin catalog over the Flask test client: GET answers an ETag, a PUT with
If-Match (its dry run too) is refused with 412 when the course or package changed since, a save or a publish
(run by the worker against the local Stripe server) in between; without If-Match a PUT is unconditional."""
from __future__ import annotations

import threading

import pytest

from tasks.catalog import services as catalog
from tests.conftest import drain, make_settings, while_held
from tests.tasks.catalog.test_catalog import course, snapshot

PACKAGE = {"title": "Five private lessons", "price": {"amount": 30000, "currency": "usd"},
           "credits": {"kind": "private", "quantity": 5}}


@pytest.fixture
def settings(database, stripe_server):
    return make_settings(database.url, **stripe_server.settings_changes())


def _get(client, headers, path):
    response = client.get(path, headers=headers)
    assert response.status_code == 200, response.json
    assert response.headers["ETag"].startswith('"') and response.headers["ETag"].endswith('"')
    return response.json, response.headers["ETag"]


def _audit(client, headers) -> list[str]:
    return [e["action"] for e in client.get("/admin/audit", headers=headers).json["entries"]]


def _refused(response) -> None:
    assert response.status_code == 412, response.json
    assert response.json["error"]["code"] == "precondition_failed"
    assert "nothing changed" in response.json["error"]["message"]
    assert "ETag" not in response.headers


def test_a_stale_get_put_back_after_publishing_is_412_and_the_published_price_stays(client, admin_headers, runtime,
                                                                                      worker, stripe_server):
    """Before: the GET read before publishing (`stripe_price_id: null`), PUT back with a new title, unlinked the
    price publishing had linked: a published package with no price, silently."""
    assert client.put("/admin/packages/FIVE", json=PACKAGE, headers=admin_headers).status_code == 201
    stale, stale_tag = _get(client, admin_headers, "/admin/packages/FIVE")
    assert stale["stripe_price_id"] is None
    assert client.post("/admin/packages/FIVE/publish", headers=admin_headers).status_code == 202
    drain(runtime)
    published, tag = _get(client, admin_headers, "/admin/packages/FIVE")
    assert published["stripe_price_id"] in stripe_server.prices and tag != stale_tag  # publishing changed it
    before, audit = snapshot(runtime.db), _audit(client, admin_headers)

    refused = client.put("/admin/packages/FIVE", json={**stale, "title": "Five private lessons (spring)"},
                         headers={**admin_headers, "If-Match": stale_tag})
    _refused(refused)
    assert snapshot(runtime.db) == before and _audit(client, admin_headers) == audit
    assert _get(client, admin_headers, "/admin/packages/FIVE") == (published, tag)

    # the fresh GET's ETag: saved, the price kept, and the answer's ETag is the one GET now answers
    saved = client.put("/admin/packages/FIVE", json={**published, "title": "Five private lessons (spring)"},
                       headers={**admin_headers, "If-Match": tag})
    assert saved.status_code == 200 and saved.json["change"] == "updated", saved.json
    assert saved.json["package"]["stripe_price_id"] == published["stripe_price_id"]
    again, new_tag = _get(client, admin_headers, "/admin/packages/FIVE")
    assert saved.headers["ETag"] == new_tag != tag and again == saved.json["package"]
    # the ETag it replaced no longer matches
    _refused(client.put("/admin/packages/FIVE", json=published, headers={**admin_headers, "If-Match": tag}))


def test_a_course_read_as_a_draft_cannot_be_saved_or_dry_run_over_its_publish(client, admin_headers, runtime, worker,
                                                                              stripe_server):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    draft, draft_tag = _get(client, admin_headers, "/admin/courses/SFZ")
    assert client.post("/admin/courses/SFZ/publish", headers=admin_headers).status_code == 202
    drain(runtime)
    published, tag = _get(client, admin_headers, "/admin/courses/SFZ")
    assert published["status"] == "published" and tag != draft_tag
    before = snapshot(runtime.db)
    edit = {**draft, "title": "Sforzando, revised"}

    for path in ("/admin/courses/SFZ", "/admin/courses/SFZ?dry_run=true"):  # a what-if of a stale view: refused
        _refused(client.put(path, json=edit, headers={**admin_headers, "If-Match": draft_tag}))
    assert snapshot(runtime.db) == before
    assert _get(client, admin_headers, "/admin/courses/SFZ") == (published, tag)

    what_if = client.put("/admin/courses/SFZ?dry_run=true", json=edit, headers={**admin_headers, "If-Match": tag})
    assert what_if.status_code == 200 and what_if.json["dry_run"] is True and what_if.json["would_apply"] is True
    assert snapshot(runtime.db) == before
    saved = client.put("/admin/courses/SFZ", json=edit, headers={**admin_headers, "If-Match": tag})
    assert saved.status_code == 200 and saved.json["course"]["status"] == "published"
    assert saved.headers["ETag"] == _get(client, admin_headers, "/admin/courses/SFZ")[1] != tag


def test_the_etag_changes_with_every_save_that_changes_something(client, admin_headers):
    created = client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    assert created.status_code == 201
    view, tag = _get(client, admin_headers, "/admin/courses/SFZ")
    assert created.headers["ETag"] == tag
    # GET put back unchanged: `unchanged`, the same ETag
    same = client.put("/admin/courses/SFZ", json=view, headers={**admin_headers, "If-Match": tag})
    assert same.json["change"] == "unchanged" and same.headers["ETag"] == tag
    seen = {tag}
    for edit in (course(title="New title"), course(bundle=[]), course(steps=course()["steps"][:2])):
        saved = client.put("/admin/courses/SFZ", json=edit, headers=admin_headers)
        assert saved.json["change"] == "updated" and saved.headers["ETag"] not in seen
        assert _get(client, admin_headers, "/admin/courses/SFZ")[1] == saved.headers["ETag"]
        seen.add(saved.headers["ETag"])
    # a package too
    client.put("/admin/packages/FIVE", json=PACKAGE, headers=admin_headers)
    _, package_tag = _get(client, admin_headers, "/admin/packages/FIVE")
    raised = client.put("/admin/packages/FIVE", json={**PACKAGE, "price": {"amount": 35000, "currency": "usd"}},
                        headers=admin_headers)
    assert raised.headers["ETag"] != package_tag


def test_star_means_it_must_exist_and_if_none_match_star_only_creates(client, admin_headers, runtime):
    any_one = {**admin_headers, "If-Match": "*"}
    create_only = {**admin_headers, "If-None-Match": "*"}
    _refused(client.put("/admin/courses/SFZ", json=course(), headers=any_one))
    _refused(client.put("/admin/courses/SFZ?dry_run=true", json=course(), headers=any_one))
    _refused(client.put("/admin/packages/FIVE", json=PACKAGE, headers=any_one))
    assert snapshot(runtime.db) == []  # nothing was made

    assert client.put("/admin/courses/SFZ", json=course(), headers=create_only).status_code == 201
    assert client.put("/admin/packages/FIVE", json=PACKAGE, headers=create_only).status_code == 201
    before = snapshot(runtime.db)
    _refused(client.put("/admin/courses/SFZ", json=course(title="Another"), headers=create_only))
    _refused(client.put("/admin/packages/FIVE", json={**PACKAGE, "title": "Another"}, headers=create_only))
    assert snapshot(runtime.db) == before

    assert client.put("/admin/courses/SFZ", json=course(title="Another"), headers=any_one).json["change"] == "updated"
    assert client.put("/admin/packages/FIVE", json={**PACKAGE, "title": "Another"},
                      headers=any_one).json["change"] == "updated"
    # If-None-Match naming the current ETag: refused; naming another one: saved
    view, tag = _get(client, admin_headers, "/admin/packages/FIVE")
    _refused(client.put("/admin/packages/FIVE", json=PACKAGE, headers={**admin_headers, "If-None-Match": tag}))
    assert client.put("/admin/packages/FIVE", json=PACKAGE,
                      headers={**admin_headers, "If-None-Match": '"0000"'}).json["change"] == "updated"


def test_without_if_match_a_put_is_unconditional_as_it_always_was(client, admin_headers, runtime, worker,
                                                                   stripe_server):
    """The compatible path: the same stale body without If-Match is saved, and its explicit null unlinks the
    published price (what If-Match exists to stop)."""
    client.put("/admin/packages/FIVE", json=PACKAGE, headers=admin_headers)
    stale, _ = _get(client, admin_headers, "/admin/packages/FIVE")
    client.post("/admin/packages/FIVE/publish", headers=admin_headers)
    drain(runtime)
    saved = client.put("/admin/packages/FIVE", json=stale, headers=admin_headers)
    assert saved.status_code == 200 and saved.json["package"]["stripe_price_id"] is None
    assert saved.headers["ETag"] == _get(client, admin_headers, "/admin/packages/FIVE")[1]


@pytest.mark.parametrize("value", ["", '"a" junk', " , "])
def test_an_if_match_holding_no_entity_tag_is_400_and_changes_nothing(client, admin_headers, runtime, value):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    before = snapshot(runtime.db)
    for header in ("If-Match", "If-None-Match"):
        response = client.put("/admin/courses/SFZ", json=course(title="Another"),
                              headers={**admin_headers, header: value})
        assert response.status_code == 400 and response.json["error"]["field"] == header, response.json
    assert snapshot(runtime.db) == before


def test_if_match_compares_strongly_a_weak_tag_never_matches(client, admin_headers):
    client.put("/admin/courses/SFZ", json=course(), headers=admin_headers)
    view, tag = _get(client, admin_headers, "/admin/courses/SFZ")
    _refused(client.put("/admin/courses/SFZ", json=view, headers={**admin_headers, "If-Match": f"W/{tag}"}))
    # one of several listed tags is enough
    listed = client.put("/admin/courses/SFZ", json=view, headers={**admin_headers, "If-Match": f'"0000", {tag}'})
    assert listed.status_code == 200 and listed.json["change"] == "unchanged"


@pytest.mark.parametrize("db_backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_condition_is_checked_under_the_rows_lock(app, admin_headers, runtime, database):
    """A PUT with the current ETag arrives while another transaction holds the package's row (as publishing does
    when it links a price) and changes it: the PUT waits for the row, sees the change and is refused."""
    client = app.test_client()
    client.put("/admin/packages/FIVE", json=PACKAGE, headers=admin_headers)
    view, tag = _get(client, admin_headers, "/admin/packages/FIVE")
    linked, release = threading.Event(), threading.Event()

    def link_a_price():
        with runtime.db.session_scope() as s:
            catalog.get_package(s, "FIVE", lock=True).stripe_price_id = "price_LINKED"
            linked.set()
            assert release.wait(30)

    _, put, _ = while_held(database, link_a_price, lambda: app.test_client().put(
        "/admin/packages/FIVE", json={**view, "title": "Renamed"}, headers={**admin_headers, "If-Match": tag}),
        held=linked, release=release)
    _refused(put.result())
    after, _ = _get(client, admin_headers, "/admin/packages/FIVE")
    assert (after["title"], after["stripe_price_id"]) == (PACKAGE["title"], "price_LINKED")


def test_the_document_declares_the_headers_and_the_412(client):
    paths = client.get("/openapi.json").json["paths"]
    for kind in ("courses", "packages"):
        put, get = paths[f"/admin/{kind}/{{code}}"]["put"], paths[f"/admin/{kind}/{{code}}"]["get"]
        assert {"If-Match", "If-None-Match"} <= {p["name"] for p in put["parameters"] if p["in"] == "header"}
        assert "precondition_failed" in put["responses"]["412"]["description"]
        for response in (get["responses"]["200"], put["responses"]["200"], put["responses"]["201"]):
            assert "ETag" in response["headers"]


@pytest.mark.parametrize("kind, body", [("courses", course()), ("packages", PACKAGE)])
def test_a_get_with_the_current_etag_is_304_and_with_an_old_one_the_view(client, admin_headers, kind, body):
    """A client polling a course kept reading the whole view: If-None-Match was ignored."""
    path = f"/admin/{kind}/FIVE"
    assert client.put(path, json=body, headers=admin_headers).status_code == 201
    view, tag = _get(client, admin_headers, path)
    for held in (tag, f"W/{tag}", f'"other", {tag}', "*"):
        same = client.get(path, headers={**admin_headers, "If-None-Match": held})
        assert (same.status_code, same.data, same.headers["ETag"]) == (304, b"", tag), held
    assert client.put(path, json={**body, "title": "Renamed"}, headers=admin_headers).status_code == 200
    changed = client.get(path, headers={**admin_headers, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.json["title"] == "Renamed" and changed.headers["ETag"] != tag
    stale = client.get(path, headers={**admin_headers, "If-Match": tag})
    assert stale.status_code == 412 and stale.json["error"]["code"] == "precondition_failed"
    assert client.get(path, headers={**admin_headers, "If-Match": changed.headers["ETag"]}).status_code == 200


@pytest.mark.parametrize("kind, body", [("courses", course()), ("packages", PACKAGE)])
def test_a_delete_with_a_stale_etag_is_412_and_deletes_nothing(client, admin_headers, runtime, kind, body):
    """DELETE ignored If-Match: an admin deleting what they had reviewed deleted whatever it had become since."""
    path = f"/admin/{kind}/FIVE"
    assert client.put(path, json=body, headers=admin_headers).status_code == 201
    _, reviewed = _get(client, admin_headers, path)
    assert client.put(path, json={**body, "title": "Changed by someone else"}, headers=admin_headers).status_code == 200
    before, audit = snapshot(runtime.db), _audit(client, admin_headers)
    _refused(client.delete(path, headers={**admin_headers, "If-Match": reviewed}))
    assert snapshot(runtime.db) == before and _audit(client, admin_headers) == audit
    _, current = _get(client, admin_headers, path)
    deleted = client.delete(path, headers={**admin_headers, "If-Match": current})
    assert deleted.status_code == 200 and deleted.json == {"code": "FIVE", "deleted": True}
    assert client.get(path, headers=admin_headers).status_code == 404
    _refused(client.delete(path, headers={**admin_headers, "If-Match": "*"}))  # gone: If-Match * cannot hold


def test_a_publish_with_a_stale_etag_is_412_and_queues_nothing(client, admin_headers, runtime, worker,
                                                                stripe_server):
    assert client.put("/admin/packages/FIVE", json=PACKAGE, headers=admin_headers).status_code == 201
    _, reviewed = _get(client, admin_headers, "/admin/packages/FIVE")
    changed = {**PACKAGE, "price": {"amount": 1, "currency": "usd"}}
    assert client.put("/admin/packages/FIVE", json=changed, headers=admin_headers).status_code == 200
    audit = _audit(client, admin_headers)
    _refused(client.post("/admin/packages/FIVE/publish", headers={**admin_headers, "If-Match": reviewed}))
    drain(runtime)
    assert stripe_server.prices == {} and _audit(client, admin_headers) == audit  # nothing was published
    _, current = _get(client, admin_headers, "/admin/packages/FIVE")
    assert client.post("/admin/packages/FIVE/publish",
                       headers={**admin_headers, "If-Match": current}).status_code == 202
    drain(runtime)
    assert [p["unit_amount"] for p in stripe_server.prices.values()] == [1]


def test_the_document_declares_the_read_delete_and_publish_conditions(client):
    paths = client.get("/openapi.json").json["paths"]
    for kind in ("courses", "packages"):
        one = paths[f"/admin/{kind}/{{code}}"]
        for operation in (one["get"], one["delete"], paths[f"/admin/{kind}/{{code}}/publish"]["post"]):
            assert {"If-Match", "If-None-Match"} <= {p["name"] for p in operation["parameters"] if p["in"] == "header"}
            assert "precondition_failed" in operation["responses"]["412"]["description"]
        assert "ETag" in one["get"]["responses"]["304"]["headers"]
