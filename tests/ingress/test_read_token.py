"""READ_API_TOKEN: several tokens (rotation), GET /v1/… and POST /v1/checkout-sessions only; every other
route answers 403 `forbidden` to it, and ADMIN_TOKEN keeps opening everything."""
from __future__ import annotations

import pytest
from sqlalchemy import update
from werkzeug.routing import IntegerConverter

from coursepipe.settings import ConfigError, Settings
from db.models import AdminApiToken
from db.types import utcnow
from ingress.app import create_app
from tests.admin_support import make_token
from tests.conftest import ADMIN_TOKEN, assert_contract_kept, contract_checked, make_settings
from tests.ingress.test_dashboard import csrf_of

READ_OLD, READ_NEW = "read-token-old-0123456789abcdef", "read-token-new-0123456789abcdef"


@pytest.fixture
def app(runtime):
    settings = make_settings(runtime.settings.database_url, read_api_tokens=(READ_OLD, READ_NEW))
    app = create_app(settings, runtime=runtime)
    yield contract_checked(app)
    assert_contract_kept(app)


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _sample_url(rule) -> str:
    values = {arg: (1 if isinstance(rule._converters[arg], IntegerConverter) else "X")
              for arg in rule.arguments}
    return rule.build(values, append_unknown=False)[1]


def test_read_token_list_is_read_from_the_environment():
    s = Settings.from_env({"READ_API_TOKEN": " a1, b2 ,,"})
    assert s.read_api_tokens == ("a1", "b2")
    assert Settings.from_env({}).read_api_tokens == ()
    with pytest.raises(ConfigError, match="READ_API_TOKEN"):
        Settings.from_env({"READ_API_TOKEN": "x,adm", "ADMIN_TOKEN": "adm"})


@pytest.mark.parametrize("weak", ["selling-reader", "a" * 40])
def test_a_weak_read_token_is_refused_at_start_up(runtime, weak):
    """Every route answers a read token (403 to the right one, where any other token gets the route's own answer),
    and outside /admin and /v1 no failed-login limit counts the guesses: a short read token was an oracle. It is
    held to the other secrets' strength, as the ingress starts."""
    with pytest.raises(ConfigError, match="READ_API_TOKEN is too weak"):
        create_app(make_settings(runtime.settings.database_url, read_api_tokens=(READ_OLD, weak)), runtime=runtime)


@pytest.mark.parametrize("token", [READ_OLD, READ_NEW])
def test_each_read_token_opens_the_read_api(client, token):
    for path in ("/v1/courses", "/v1/students/stu_1/courses", "/v1/students/stu_1/credits",
                 "/v1/calendar?from=2026-01-01T00:00:00Z&to=2026-01-08T00:00:00Z"):
        response = client.get(path, headers=_bearer(token))
        assert response.status_code == 200, (path, response.json)


def test_an_unknown_token_is_401_on_the_read_api(client):
    assert client.get("/v1/courses", headers=_bearer("nope")).status_code == 401
    assert client.get("/v1/courses").status_code == 401


def test_read_token_is_forbidden_on_every_other_route(app, client):
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = _sample_url(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            allowed = (method == "GET" and path.startswith("/v1/")) or (method, path) == ("POST", "/v1/checkout-sessions")
            response = client.open(path, method=method, headers=_bearer(READ_NEW), json={})
            if allowed:
                assert response.status_code != 403, (method, path)
            else:
                assert response.status_code == 403, (method, path, response.status_code)
                assert response.json["error"]["code"] == "forbidden"
                checked += 1
    assert checked >= 20  # admin API, dashboard, reports, metrics, health, webhooks


def test_admin_token_still_opens_admin_routes(client):
    assert client.get("/admin/events", headers=_bearer(ADMIN_TOKEN)).status_code == 200
    assert client.get("/v1/courses", headers=_bearer(ADMIN_TOKEN)).status_code == 200
    assert client.get("/admin/events", headers=_bearer(READ_OLD)).status_code == 403


def test_read_token_typed_into_the_dashboard_login_does_not_log_in(client):
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": "", "password": READ_OLD, "csrf_token": csrf_of(page.get_data(True))})
    assert response.status_code == 401 and "coursepipe_admin" not in response.headers.get("Set-Cookie", "")
    assert client.get("/admin/").status_code == 302


@pytest.mark.parametrize("role", ["viewer", "operator", "owner"])
def test_a_personal_token_of_any_role_reads_the_read_api(client, runtime, role):
    token = make_token(runtime.db, f"{role}@studio.test", role)
    for path in ("/v1/courses", "/v1/packages", "/v1/students/stu_1/courses", "/v1/students/stu_1/credits",
                 "/v1/students/stu_1/credits/statement", "/v1/events",
                 "/v1/calendar?from=2026-01-01T00:00:00Z&to=2026-01-08T00:00:00Z"):
        response = client.get(path, headers=_bearer(token))
        assert response.status_code == 200, (role, path, response.json)


@pytest.mark.parametrize("role, allowed", [("viewer", False), ("operator", True), ("owner", True)])
def test_creating_a_checkout_session_with_a_personal_token_needs_an_operator(client, runtime, role, allowed):
    token = make_token(runtime.db, f"{role}@studio.test", role)
    body = {"student_id": "stu_1", "course_code": "NOPE", "success_url": "https://studio.test/ok",
            "cancel_url": "https://studio.test/back"}
    response = client.post("/v1/checkout-sessions", json=body, headers=_bearer(token))
    if allowed:  # past the role check: the unknown course is what stops it (nothing at Stripe)
        assert response.status_code in (404, 503), response.json
    else:
        assert response.status_code == 403 and response.json["error"]["code"] == "forbidden"
        assert "operator" in response.json["error"]["message"]


def test_a_revoked_or_unknown_personal_token_is_401_on_the_read_api(client, runtime):
    token = make_token(runtime.db, "viewer@studio.test", "viewer")
    assert client.get("/v1/courses", headers=_bearer(token)).status_code == 200
    with runtime.db.session_scope() as s:
        s.execute(update(AdminApiToken).values(revoked_at=utcnow()))
    assert client.get("/v1/courses", headers=_bearer(token)).status_code == 401
    assert client.get("/v1/courses", headers=_bearer("cpa_" + "x" * 40)).status_code == 401
