"""The admin catalog's write bodies: what /openapi.json documents (`CourseWrite`, `PackageWrite`) is what the
app accepts, body by body, so the two cannot drift apart; and what GET answers can be PUT back unchanged,
package credits as the one `{kind, quantity}` object the admin view answers and PUT takes."""
from __future__ import annotations

import copy

import pytest

from tasks.catalog.services import CourseIn, PackageIn, StepIn
from tests.contract import document, response_errors, schema_errors
from tests.tasks.catalog.test_catalog import course, snapshot

MINIMAL = {"title": "T", "price": {"amount": 0, "currency": "usd"}, "steps": [{"label": "A"}]}
PACKAGE = {"title": "Five private lessons", "price": {"amount": 30000, "currency": "usd"},
           "credits": {"kind": "private", "quantity": 5}}


def _with(base: dict, *path_and_value) -> dict:
    """A deep copy of `base` with the value at `path` (keys and indices) set, or removed when it is `...`."""
    *path, value = path_and_value
    body = copy.deepcopy(base)
    here = body
    for key in path[:-1]:
        here = here[key]
    if value is ...:
        del here[path[-1]]
    else:
        here[path[-1]] = value
    return body


def _sold_course_body() -> dict:  # what tests/ingress/test_admin_catalog.py sends to reorder and attach
    return course(steps=[{"label": "SFZ-2", "title": "Step 2", "options": ["gc_SFZ_2_0"]},
                         {"label": "SFZ-1", "title": "Step 1", "options": ["gc_SFZ_1_0", "gc_extra"]}],
                  bundle=[{"kind": "private_credit", "quantity": 2}])


GOOD_COURSES = [
    course(), course(title="New title"), _sold_course_body(), MINIMAL,
    _with(course(), "steps", 2, "options", ["gc_new"]),
    course(price={"amount": 20000, "currency": "usd"}), course(price={"amount": 12510, "currency": "kwd"}),
    {**course(), "code": "SFZ", "reason": "Tuesday group first"}, {**course(), "code": None, "reason": None},
    _with(course(), "bundle", {"kind": "group_credit", "quantity": 1}), _with(course(), "bundle", None),
    _with(course(), "bundle", []), _with(course(), "bundle", ...), _with(course(), "timezone", ...),
    _with(course(), "description", None), _with(course(), "description", ""), _with(course(), "marketing_copy", " "),
    _with(course(), "steps", [{"label": "A", "title": None, "summary": None, "position": None, "options": []},
                              {"label": "B", "position": 2}]),
    # the code trims surrounding whitespace before it checks a string
    {**course(), "code": " SFZ ", "title": "  " + "x" * 200 + "\n", "timezone": " UTC ",
     "price": {"amount": 1, "currency": " EUR "}},
    _with(course(), "steps", 0, "label", " " + "L" * 64 + " "),
    _with(course(), "bundle", [{"kind": "private_credit", "quantity": 1000}, {"kind": "group_credit", "quantity": 1}]),
    {**MINIMAL, "price": {"amount": 99_999_999, "currency": "jpy"}},
    {**MINIMAL, "steps": [{"label": f"S{i}"} for i in range(100)]},
    # what GET answers beside the written fields
    {**course(), "status": "published", "published": True, "published_at": None, "stripe": {"in_sync": True}},
    _with(course(), "steps", 0, "id", 11),
]
BAD_COURSES = [  # refused by the document and by the code (400, naming the field)
    ({**course(), "steps": []}, "steps"),
    (_with(course(), "steps", ...), "steps"),
    ({**MINIMAL, "steps": [{"label": f"S{i}"} for i in range(101)]}, "steps"),
    (_with(course(), "steps", None), "steps"),
    ({**course(), "price": {"amount": 100, "currency": "EURO"}}, "price.currency"),
    ({**course(), "price": {"amount": -1, "currency": "eur"}}, "price.amount"),
    ({**course(), "price": {"amount": 100_000_000, "currency": "eur"}}, "price.amount"),
    ({**course(), "price": {"amount": "100", "currency": "eur"}}, "price.amount"),
    ({**course(), "price": {"amount": True, "currency": "eur"}}, "price.amount"),
    ({**course(), "price": {"amount": 100}}, "price.currency"),
    ({**course(), "price": {"amount": 100, "currency": "eur", "stripe_price_id": "price_1"}},
     "price.stripe_price_id"),
    (_with(course(), "price", ...), "price"),
    (_with(course(), "price", 12000), "price"),
    ({**course(), "bundle": [{"kind": "group_credit", "quantity": 0}]}, "bundle[0].quantity"),
    ({**course(), "bundle": [{"kind": "group_credit", "quantity": 1001}]}, "bundle[0].quantity"),
    ({**course(), "bundle": [{"kind": "group", "quantity": 1}]}, "bundle[0].kind"),
    ({**course(), "bundle": [{"kind": "group_credit", "quantity": 1}, {"kind": "group_credit", "quantity": 2}]},
     "bundle[1].kind"),
    ({**course(), "bundle": "group_credit"}, "bundle"),
    ({**course(), "colour": "red"}, "colour"),
    (_with(course(), "steps", 0, "colour", "red"), "steps[0].colour"),
    (_with(course(), "title", ...), "title"),
    (_with(course(), "title", ""), "title"),
    (_with(course(), "title", "   "), "title"),
    (_with(course(), "title", "x" * 201), "title"),
    (_with(course(), "title", None), "title"),
    (_with(course(), "description", "x" * 20_001), "description"),
    (_with(course(), "timezone", None), "timezone"),
    (_with(course(), "steps", 0, "label", ...), "steps[0].label"),
    (_with(course(), "steps", 0, "label", " "), "steps[0].label"),
    (_with(course(), "steps", 0, "label", "L" * 65), "steps[0].label"),
    (_with(course(), "steps", 0, "title", ""), "steps[0].title"),
    (_with(course(), "steps", 0, "options", None), "steps[0].options"),
    (_with(course(), "steps", 0, "options", [""]), "steps[0].options[0]"),
    (_with(course(), "steps", 0, "options", ["gc_a1", "gc_a1"]), "steps[0].options[1]"),
    (_with(course(), "steps", 0, "options", "gc_a1"), "steps[0].options"),
    (_with(course(), "steps", 0, "position", 0), "steps[0].position"),
    (_with(course(), "steps", 0, "position", "1"), "steps[0].position"),
    (_with(course(), "steps", 0, "summary", 5), "steps[0].summary"),
    ({**course(), "code": "bad code"}, "code"),
    ({**course(), "reason": 5}, "reason"),
    ({**course(), "reason": ["why"]}, "reason"),
]
BEYOND_COURSES = [  # the document says these in words (the schema cannot): the code refuses them
    ({**course(), "timezone": "Nowhere/Land"}, "timezone"),
    ({**course(), "price": {"amount": 100, "currency": "XYZ"}}, "price.currency"),
    ({**course(), "price": {"amount": 12000.0, "currency": "eur"}}, "price.amount"),
    ({**course(), "price": {"amount": 12505, "currency": "kwd"}}, "price"),  # Stripe charges fils in tens
    (_with(course(), "steps", 1, "label", "SFZ-1"), "steps[1].label"),
    (_with(course(), "steps", 1, "options", ["gc_a1"]), "steps[1].options[0]"),
    (_with(course(), "steps", 0, "position", 2), "steps[0].position"),
    ({**course(), "code": "OTHER"}, "code"),
]

GOOD_PACKAGES = [
    PACKAGE, {**PACKAGE, "credits": {"kind": "group_credit", "quantity": 1000}, "validity_days": 3650},
    {**PACKAGE, "credits": {"kind": "private_credit", "quantity": 1}, "validity_days": None},
    {**PACKAGE, "stripe_price_id": "price_byhand"}, {**PACKAGE, "stripe_price_id": None},
    {**PACKAGE, "code": "FIVE", "reason": "new year"}, {**PACKAGE, "title": " Five ", "code": " FIVE "},
    {**PACKAGE, "stripe_product_id": "prod_1", "stripe": {"in_sync": False}},
]
BAD_PACKAGES = [
    ({**PACKAGE, "credits": {"kind": "gold", "quantity": 1}}, "credits.kind"),
    # a list (the shape GET /v1/packages answers) is not the admin form, whatever it holds
    ({**PACKAGE, "credits": [{"kind": "private", "quantity": 5}]}, "credits"),
    ({**PACKAGE, "credits": [{"kind": "gold", "quantity": 1}]}, "credits"),
    ({**PACKAGE, "credits": []}, "credits"),
    ({**PACKAGE, "credits": [{"kind": "group", "quantity": 1}, {"kind": "private", "quantity": 1}]}, "credits"),
    ({**PACKAGE, "credits": {"kind": "group", "quantity": 0}}, "credits.quantity"),
    ({**PACKAGE, "credits": {"kind": "group", "quantity": 1001}}, "credits.quantity"),
    ({**PACKAGE, "credits": {"kind": "group"}}, "credits.quantity"),
    ({**PACKAGE, "credits": {"kind": "group", "quantity": 1, "expires": 3}}, "credits.expires"),
    ({**PACKAGE, "credits": None}, "credits"),
    ({**PACKAGE, "credits": "group:5"}, "credits"),
    ({**PACKAGE, "credits": [5]}, "credits"),
    (_with(PACKAGE, "credits", ...), "credits"),
    ({**PACKAGE, "validity_days": 0}, "validity_days"),
    ({**PACKAGE, "validity_days": 3651}, "validity_days"),
    ({**PACKAGE, "validity_days": "30"}, "validity_days"),
    ({**PACKAGE, "stripe_price_id": "prc_1"}, "stripe_price_id"),
    ({**PACKAGE, "stripe_price_id": "price_"}, "stripe_price_id"),
    ({**PACKAGE, "steps": []}, "steps"),
    ({**PACKAGE, "title": ""}, "title"),
    ({**PACKAGE, "reason": 5}, "reason"),
    (_with(PACKAGE, "price", ...), "price"),
]
BEYOND_PACKAGES = [
    ({**PACKAGE, "price": {"amount": 100, "currency": "XYZ"}}, "price.currency"),
    ({**PACKAGE, "price": {"amount": 1001, "currency": "bhd"}}, "price"),
    ({**PACKAGE, "credits": {"kind": "group", "quantity": 5.0}}, "credits.quantity"),
    ({**PACKAGE, "code": "OTHER"}, "code"),
]


def _body_errors(app, method: str, path: str, body) -> list[str]:
    doc = document(app)
    schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return schema_errors(doc, schema, body)


def _answer(client, headers, path: str, body):
    response = client.put(path, json=body, headers=headers)
    return response.status_code, response.json


@pytest.mark.parametrize("kind, good, bad, beyond", [
    ("courses", GOOD_COURSES, BAD_COURSES, BEYOND_COURSES),
    ("packages", GOOD_PACKAGES, BAD_PACKAGES, BEYOND_PACKAGES),
])
def test_the_documented_body_accepts_what_the_app_accepts_and_refuses_what_it_refuses(
        app, client, admin_headers, runtime, kind, good, bad, beyond):
    template, url = f"/admin/{kind}/{{code}}", f"/admin/{kind}/SFZ" if kind == "courses" else f"/admin/{kind}/FIVE"
    for body in good:
        assert _body_errors(app, "put", template, body) == [], body
        if kind == "courses":
            status, answer = _answer(client, admin_headers, f"{url}?dry_run=true", body)
            assert status == 200, (body, answer)
            assert response_errors(app, "PUT", url, status, answer) == [], answer
        status, answer = _answer(client, admin_headers, url, body)
        assert status in (200, 201), (body, answer)
        assert response_errors(app, "PUT", url, status, answer) == [], answer
        assert response_errors(app, "GET", url, 200, client.get(url, headers=admin_headers).json) == []
    before = snapshot(runtime.db)
    for body, field in bad:
        assert _body_errors(app, "put", template, body), f"the document accepts {body}"
        status, answer = _answer(client, admin_headers, url, body)
        assert (status, answer["error"]["code"], answer["error"]["field"]) == (400, "validation_failed", field), body
    for body, field in beyond:  # the schema cannot say these; its descriptions do, and the code refuses them
        assert _body_errors(app, "put", template, body) == [], body
        status, answer = _answer(client, admin_headers, url, body)
        assert (status, answer["error"]["field"]) == (400, field), body
    assert snapshot(runtime.db) == before  # a refused body changes nothing


def test_the_documented_read_only_fields_are_the_ones_the_code_ignores(app):
    schemas = document(app)["components"]["schemas"]
    for name, model in (("CourseWrite", CourseIn), ("StepWrite", StepIn), ("PackageWrite", PackageIn)):
        documented = {field for field, schema in schemas[name]["properties"].items() if schema.get("readOnly")}
        assert documented == model.READ_ONLY, name
        assert set(schemas[name]["properties"]) - documented - {"reason"} == set(model.model_fields), name


def test_a_course_as_get_answers_it_can_be_put_back_unchanged(client, admin_headers):
    """Before: the admin view's `status`, `published`, `published_at`, `stripe` and each step's `id` were
    unknown fields to PUT: 400 `status: unknown field`."""
    assert client.put("/admin/courses/SFZ", json=course(), headers=admin_headers).status_code == 201
    got = client.get("/admin/courses/SFZ", headers=admin_headers).json
    again = client.put("/admin/courses/SFZ", json=got, headers=admin_headers)
    assert again.status_code == 200 and again.json["change"] == "unchanged", again.json
    assert client.get("/admin/courses/SFZ", headers=admin_headers).json == got
    # an edit made on what GET answered: the ignored fields do not get in its way
    got["steps"].reverse()
    for place, step in enumerate(got["steps"], start=1):
        step["position"] = place
    moved = client.put("/admin/courses/SFZ", json=got, headers=admin_headers)
    assert moved.status_code == 200 and moved.json["change"] == "updated"
    assert [s["label"] for s in moved.json["course"]["steps"]] == ["SFZ-3", "SFZ-2", "SFZ-1"]


def test_package_credits_are_one_object_and_a_package_as_get_answers_it_can_be_put_back(client, admin_headers):
    """The admin view answers `credits` as the `{kind, quantity}` object PUT takes, so it can be PUT back; a list
    (the storefront's `GET /v1/packages` shape) is refused, naming `credits`, and changes nothing."""
    created = client.put("/admin/packages/FIVE", json={**PACKAGE, "stripe_price_id": "price_byhand"},
                         headers=admin_headers)
    assert created.status_code == 201 and created.json["package"]["credits"] == {"kind": "private", "quantity": 5}
    admin_view = client.get("/admin/packages/FIVE", headers=admin_headers).json
    assert admin_view["credits"] == {"kind": "private", "quantity": 5}
    assert [p["credits"] for p in client.get("/admin/packages", headers=admin_headers).json["packages"]] == [
        {"kind": "private", "quantity": 5}]
    on_sale = client.get("/v1/packages/FIVE", headers=admin_headers).json
    assert on_sale["credits"] == [{"kind": "private", "quantity": 5}]  # the storefront's list stays
    again = client.put("/admin/packages/FIVE", json=admin_view, headers=admin_headers)
    assert again.status_code == 200 and again.json["change"] == "unchanged", again.json
    for credits in (on_sale["credits"], [{"kind": "group_credit", "quantity": 8}]):
        listed = client.put("/admin/packages/FIVE", json={**PACKAGE, "credits": credits}, headers=admin_headers)
        error = listed.json["error"]
        assert (listed.status_code, error["code"], error["field"], error["message"]) == (
            400, "validation_failed", "credits", "credits: must be an object"), listed.json
    assert client.get("/admin/packages/FIVE", headers=admin_headers).json == admin_view


def test_a_reason_that_is_not_a_string_is_refused_and_nothing_is_saved(client, admin_headers):
    """Before: a non-string `reason` was dropped without a word and the course saved with no reason recorded."""
    refused = client.put("/admin/courses/SFZ", json={**course(), "reason": {"why": "x"}}, headers=admin_headers)
    assert refused.status_code == 400 and refused.json["error"]["field"] == "reason"
    assert client.get("/admin/courses/SFZ", headers=admin_headers).status_code == 404
    assert client.get("/admin/audit", headers=admin_headers).json["entries"] == []
