"""The admin-account write bodies (`AdminWrite`, `TokenWrite`): what /openapi.json documents is what the app
accepts, body by body, and what it answers matches the documented views (`AdminView`, `AdminList`,
`TokenCreated`)."""
from __future__ import annotations

from sqlalchemy import func, select

from db.models import AdminAccount, AdminApiToken
from tests.admin_support import bearer, make_token
from tests.contract import document, response_errors, schema_errors

PASSWORD = "correct horse battery"

GOOD_ADMINS = [
    {"email": "a1@studio.test", "role": "viewer", "password": PASSWORD},
    {"email": "  A2@Studio.TEST \n", "role": "operator", "password": "x" * 12, "reason": "new hire"},
    {"email": "a3@studio.test", "role": "owner", "password": PASSWORD, "reason": None},
    {"email": f"{'b' * 300}@studio.example.test", "role": "viewer", "password": PASSWORD},  # 320 characters
]
BAD_ADMINS = [  # refused by the document and by the app (400, naming the field)
    ({"email": "nope", "role": "viewer", "password": PASSWORD}, "email"),
    ({"email": "a b@studio.test", "role": "viewer", "password": PASSWORD}, "email"),
    ({"email": f"{'b' * 301}@studio.example.test", "role": "viewer", "password": PASSWORD}, "email"),
    ({"email": 5, "role": "viewer", "password": PASSWORD}, "email"),
    ({"role": "viewer", "password": PASSWORD}, "email"),
    ({"email": "c@studio.test", "role": "king", "password": PASSWORD}, "role"),
    ({"email": "c@studio.test", "role": ["owner"], "password": PASSWORD}, "role"),
    ({"email": "c@studio.test", "password": PASSWORD}, "role"),
    ({"email": "c@studio.test", "role": "viewer", "password": "x" * 11}, "password"),
    ({"email": "c@studio.test", "role": "viewer", "password": 123456789012}, "password"),
    ({"email": "c@studio.test", "role": "viewer"}, "password"),
    ({"email": "c@studio.test", "role": "viewer", "password": PASSWORD, "reason": 7}, "reason"),
    ({"email": "c@studio.test", "role": "viewer", "password": PASSWORD, "admin": True}, "admin"),
]
GOOD_TOKENS = [{"name": "scripts"}, {"name": " " + "n" * 100 + " "}]
BAD_TOKENS = [({"name": ""}, "name"), ({"name": "   "}, "name"), ({"name": "n" * 101}, "name"), ({"name": 5}, "name"),
              ({}, "name"), ({"name": "x", "scope": "all"}, "scope")]


def _body_errors(app, path: str, body) -> list[str]:
    doc = document(app)
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return schema_errors(doc, schema, body)


def _count(database, model) -> int:
    with database.session_scope() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_the_documented_admin_body_accepts_what_the_app_accepts_and_refuses_what_it_refuses(app, client, database):
    owner = bearer(make_token(database, "owner@studio.test", "owner"))
    for body in GOOD_ADMINS:
        assert _body_errors(app, "/admin/admins", body) == [], body
        response = client.post("/admin/admins", json=body, headers=owner)
        assert response.status_code == 201, (body, response.json)
        assert response_errors(app, "POST", "/admin/admins", 201, response.json) == [], response.json
        assert response.json["email"] == body["email"].strip().lower()
    listed = client.get("/admin/admins", headers=owner)
    assert response_errors(app, "GET", "/admin/admins", 200, listed.json) == []
    assert len(listed.json["admins"]) == 1 + len(GOOD_ADMINS)
    for body, field in BAD_ADMINS:
        assert _body_errors(app, "/admin/admins", body), f"the document accepts {body}"
        response = client.post("/admin/admins", json=body, headers=owner)
        assert (response.status_code, response.json["error"]["field"]) == (400, field), (body, response.json)
    assert _count(database, AdminAccount) == 1 + len(GOOD_ADMINS)  # a refused body adds nothing


def test_the_documented_token_body_accepts_what_the_app_accepts_and_refuses_what_it_refuses(app, client, database):
    viewer = bearer(make_token(database, "viewer@studio.test", "viewer"))
    for body, field in BAD_TOKENS:
        assert _body_errors(app, "/admin/tokens", body), f"the document accepts {body}"
        response = client.post("/admin/tokens", json=body, headers=viewer)
        assert (response.status_code, response.json["error"]["field"]) == (400, field), (body, response.json)
    made = _count(database, AdminApiToken)
    for body in GOOD_TOKENS:
        assert _body_errors(app, "/admin/tokens", body) == [], body
        response = client.post("/admin/tokens", json=body, headers=viewer)
        assert response.status_code == 201, (body, response.json)
        assert response_errors(app, "POST", "/admin/tokens", 201, response.json) == [], response.json
        assert response.json["name"] == body["name"].strip() and response.json["token"]
    assert _count(database, AdminApiToken) == made + len(GOOD_TOKENS)
