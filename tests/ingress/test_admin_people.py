"""Admin accounts, server-side sessions, personal tokens and roles, over real HTTP routes."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from db.enums import InboxStatus
from db.models import AdminAccount, AdminApiToken, AdminSession, AuditEntry, InboxEvent
from db.types import utcnow
from tests.admin_support import PASSWORD, at_once, bearer, csrf_of, login_as, make_admin, make_token
from tests.conftest import ADMIN_TOKEN, make_settings


# --------------------------------------------------------------------------- CLI


def test_admins_add_list_remove_from_the_cli(database, monkeypatch):
    from coursepipe.cli import main

    monkeypatch.setenv("DATABASE_URL", database.url)
    runner = CliRunner()
    added = runner.invoke(main, ["admins", "add", "Ops@Studio.test", "--role", "operator", "--password-stdin"],
                          input=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    again = runner.invoke(main, ["admins", "add", "ops@studio.test", "--role", "viewer", "--password-stdin"],
                          input=PASSWORD + "\n")
    assert again.exit_code == 1 and "already exists" in again.output
    short = runner.invoke(main, ["admins", "add", "x@studio.test", "--role", "viewer", "--password-stdin"],
                          input="short\n")
    assert short.exit_code == 1 and "at least" in short.output
    listed = runner.invoke(main, ["admins", "list"])
    assert '"email": "ops@studio.test"' in listed.output and '"role": "operator"' in listed.output
    with database.session_scope() as s:
        account = s.scalar(select(AdminAccount))
        assert account.password_hash.startswith("$argon2id$") and PASSWORD not in account.password_hash
        assert s.scalar(select(AuditEntry.action).where(AuditEntry.target == "admin:ops@studio.test")) == "admin.add"
    removed = runner.invoke(main, ["admins", "remove", "ops@studio.test"])
    assert removed.exit_code == 0, removed.output
    assert runner.invoke(main, ["admins", "list"]).output == ""
    assert runner.invoke(main, ["admins", "remove", "ops@studio.test"]).exit_code == 1


def test_an_address_beyond_ascii_before_the_at_is_refused_as_no_browser_could_log_in_with_it(client, database,
                                                                                            monkeypatch):
    from coursepipe.cli import main

    monkeypatch.setenv("DATABASE_URL", database.url)
    added = CliRunner().invoke(main, ["admins", "add", "zoë@studio.test", "--role", "viewer", "--password-stdin"],
                               input=PASSWORD + "\n")
    assert added.exit_code == 1 and "beyond ASCII before the @" in added.output, added.output
    owner = make_token(database, "owner@studio.test", "owner")
    refused = client.post("/admin/admins", json={"email": "zoë@studio.test", "role": "viewer", "password": PASSWORD},
                          headers=bearer(owner))
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "validation_failed"
    with database.session_scope() as s:
        assert s.scalars(select(AdminAccount.email)).all() == ["owner@studio.test"]


# --------------------------------------------------------------------------- sessions


def test_login_by_email_and_password_and_logout_revokes_the_cookie(client, app, database):
    make_admin(database, "viewer@studio.test", "viewer")
    page = client.get("/admin/login")
    wrong = client.post("/admin/login", data={"email": "viewer@studio.test", "password": "not it at all",
                                              "csrf_token": csrf_of(page.get_data(True))})
    assert wrong.status_code == 401
    csrf = login_as(client, "viewer@studio.test")
    home = client.get("/admin/")
    assert home.status_code == 200 and "viewer@studio.test" in home.get_data(True)
    stolen = client.get_cookie("coursepipe_admin").value
    assert client.post("/admin/logout", data={"csrf_token": csrf}).status_code == 302
    thief = app.test_client()
    thief.set_cookie("coursepipe_admin", stolen)
    assert thief.get("/admin/").status_code == 302  # the old cookie is dead, server side
    with database.session_scope() as s:
        assert s.scalar(select(AdminSession.revoked_at)) is not None


def test_a_login_over_another_in_the_same_browser_ends_the_first_session(client, app, database):
    """Before: the first account's server-side session stayed valid, so its cookie, copied before the second
    login, still opened the dashboard as that account."""
    make_admin(database, "viewer@studio.test", "viewer")
    make_admin(database, "op@studio.test", "operator")
    login_as(client, "viewer@studio.test")
    first = client.get_cookie("coursepipe_admin").value
    login_as(client, "op@studio.test")
    assert "op@studio.test" in client.get("/admin/").get_data(True)
    copied = app.test_client()
    copied.set_cookie("coursepipe_admin", first)
    assert copied.get("/admin/").status_code == 302
    with database.session_scope() as s:
        assert [r.revoked_at is not None for r in s.scalars(select(AdminSession).order_by(AdminSession.id))] == [
            True, False]


def test_a_session_ends_at_its_absolute_lifetime(client, database):
    make_admin(database, "op@studio.test", "operator")
    login_as(client, "op@studio.test")
    with database.session_scope() as s:
        row = s.scalar(select(AdminSession))
        assert timedelta(hours=7) < row.expires_at - row.created_at <= timedelta(hours=8)
        s.execute(update(AdminSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get("/admin/").status_code == 302


def test_an_internationalised_domain_is_one_account_however_it_is_spelled(client, database):
    """Kept as A-labels, the form a browser's e-mail field submits (Chromium sends ann@exämple.test as
    ann@xn--exmple-cua.test); the Unicode spelling names the same account."""
    owner = make_token(database, "owner@studio.test", "owner")
    created = client.post("/admin/admins", json={"email": "Ann@ExÄmple.test", "role": "viewer",
                                                 "password": PASSWORD}, headers=bearer(owner))
    assert created.status_code == 201, created.get_json()
    again = client.post("/admin/admins", json={"email": "ann@xn--exmple-cua.test", "role": "owner",
                                               "password": PASSWORD}, headers=bearer(owner))
    assert again.status_code == 409
    listed = client.get("/admin/admins", headers=bearer(owner)).get_json()["admins"]
    assert sorted(a["email"] for a in listed) == ["ann@xn--exmple-cua.test", "owner@studio.test"]
    for spelling in ("ann@xn--exmple-cua.test", "ann@exämple.test"):
        login_as(client, spelling)
        assert "ann@xn--exmple-cua.test" in client.get("/admin/").get_data(True)
    assert client.delete("/admin/admins/ann@exämple.test", headers=bearer(owner)).status_code == 200


def test_an_account_stored_with_a_unicode_domain_still_logs_in_as_browsers_send_it(client, database):
    """Its address compared in canonical form: Chromium sends ann@straße.test as ann@strasse.test (UTS #46
    transitional), a non-transitional browser as ann@xn--strae-oqa.test."""
    admin_id = make_admin(database, "ann@exämple.test", "viewer")
    other_id = make_admin(database, "bob@example.test", "viewer")
    with database.session_scope() as s:
        s.execute(update(AdminAccount).where(AdminAccount.id == admin_id).values(email="ann@exämple.test"))
        s.execute(update(AdminAccount).where(AdminAccount.id == other_id).values(email="bob@straße.test"))
    login_as(client, "ann@xn--exmple-cua.test")
    assert "ann@exämple.test" in client.get("/admin/").get_data(True)
    for sent in ("bob@strasse.test", "bob@xn--strae-oqa.test", "Bob@Straße.test"):
        login_as(client, sent)
        assert "bob@straße.test" in client.get("/admin/").get_data(True)
    # kept as a non-transitional browser sent it, by a release that stored addresses as typed: the canonical form
    # spells that domain `strasse` now (before, the account could no longer log in, nor be removed)
    with database.session_scope() as s:
        s.execute(update(AdminAccount).where(AdminAccount.id == other_id).values(email="bob@xn--strae-oqa.test"))
    for sent in ("bob@xn--strae-oqa.test", "bob@strasse.test"):
        login_as(client, sent)
        assert "bob@xn--strae-oqa.test" in client.get("/admin/").get_data(True)


def test_admin_session_hours_is_the_cookies_lifetime_too(runtime, database):
    """ADMIN_SESSION_HOURS=24: before, the cookie still expired (and its signature was refused) after 8 hours, so
    an admin was logged out with the server-side session still valid."""
    from email.utils import parsedate_to_datetime

    from ingress.app import create_app

    app = create_app(runtime.settings.with_(admin_session_hours=24), runtime=runtime)
    assert app.permanent_session_lifetime == timedelta(hours=24)
    client = app.test_client()
    make_admin(database, "op@studio.test", "operator")
    page = client.get("/admin/login")
    done = client.post("/admin/login", data={"email": "op@studio.test", "password": PASSWORD,
                                             "csrf_token": csrf_of(page.get_data(True))})
    cookie = next(c for c in done.headers.getlist("Set-Cookie") if c.startswith("coursepipe_admin="))
    expires = parsedate_to_datetime(re.search(r"Expires=([^;]+)", cookie).group(1))
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(hours=24)
    with database.session_scope() as s:
        row = s.scalar(select(AdminSession))
        assert timedelta(hours=23) < row.expires_at - row.created_at <= timedelta(hours=24)


def test_the_longest_admin_session_hours_still_logs_in(runtime, database):
    """ADMIN_SESSION_HOURS at its bound (100 years) is a session and a cookie that end on a date, not a 500."""
    from coursepipe.settings import MAX_HOURS
    from ingress.app import create_app

    client = create_app(runtime.settings.with_(admin_session_hours=MAX_HOURS), runtime=runtime).test_client()
    make_admin(database, "op@studio.test", "operator")
    login_as(client, "op@studio.test")
    with database.session_scope() as s:
        row = s.scalar(select(AdminSession))
        assert row.expires_at - row.created_at == timedelta(hours=MAX_HOURS)


def test_break_glass_login_is_the_owner_and_ends_when_admin_token_rotates(client, runtime, database):
    from ingress.app import create_app

    login_as(client, "", ADMIN_TOKEN)
    assert "ADMIN_TOKEN · owner" in client.get("/admin/").get_data(True)
    cookie = client.get_cookie("coursepipe_admin").value
    rotated = create_app(runtime.settings.with_(admin_token="a-new-admin-token-0123456789"), runtime=runtime).test_client()
    rotated.set_cookie("coursepipe_admin", cookie)
    assert rotated.get("/admin/").status_code == 302


@pytest.mark.parametrize("mode, base_url, secure", [
    ("auto", "https://localhost", True), ("auto", "http://localhost", False),
    ("true", "http://localhost", True), ("false", "https://localhost", False),
])
def test_the_session_cookie_is_secure_over_tls(runtime, database, mode, base_url, secure):
    from ingress.app import create_app

    app = create_app(runtime.settings.with_(cookie_secure=mode), runtime=runtime)
    client = app.test_client()
    client.get("/admin/login", base_url=base_url)
    page = client.get("/admin/login", base_url=base_url)
    response = client.post("/admin/login", base_url=base_url, data={
        "email": "", "password": ADMIN_TOKEN, "csrf_token": csrf_of(page.get_data(True))})
    cookie = response.headers["Set-Cookie"]
    assert ("; Secure" in cookie) is secure, cookie


# --------------------------------------------------------------------------- personal tokens


def test_personal_token_is_shown_once_stored_hashed_acts_with_its_role_and_can_be_revoked(client, database):
    make_admin(database, "viewer@studio.test", "viewer")
    csrf = login_as(client, "viewer@studio.test")
    made = client.post("/admin/ui/account/tokens", data={"name": "scripts", "csrf_token": csrf})
    assert made.status_code == 201
    token = re.search(r'id="token-value">([^<]+)<', made.get_data(True)).group(1)
    assert token.startswith("cpa_") and token not in client.get("/admin/ui/account").get_data(True)
    with database.session_scope() as s:
        row = s.scalar(select(AdminApiToken))
        assert row.token_hash != token and token not in row.token_hash
    assert client.get("/admin/events", headers=bearer(token)).status_code == 200
    me = client.get("/admin/me", headers=bearer(token)).get_json()
    assert me["actor"] == "viewer@studio.test" and me["role"] == "viewer" and me["tokens"][0]["name"] == "scripts"
    refused = client.post("/admin/events/1/replay", headers=bearer(token))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "forbidden"
    token_id = me["tokens"][0]["id"]
    assert client.delete(f"/admin/tokens/{token_id}", headers=bearer(token)).status_code == 200
    assert client.get("/admin/events", headers=bearer(token)).status_code == 401
    # revoked again, from the page: the same answer, and one audit entry for the one revocation
    again = client.post(f"/admin/ui/account/tokens/{token_id}/revoke", data={"csrf_token": csrf})
    assert again.status_code == 200 and "scripts" in again.get_data(True)
    with database.session_scope() as s:
        assert s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all() == ["token.create", "token.revoke"]


def test_removing_an_admin_ends_their_tokens_and_sessions(client, app, database):
    token = make_token(database, "op@studio.test", "operator")
    login_as(client, "op@studio.test")
    owner = make_token(database, "owner@studio.test", "owner")
    assert client.delete("/admin/admins/op@studio.test", headers=bearer(owner)).status_code == 200
    assert client.get("/admin/events", headers=bearer(token)).status_code == 401
    assert client.get("/admin/").status_code == 302
    listed = client.get("/admin/admins", headers=bearer(owner)).get_json()["admins"]
    assert [a["email"] for a in listed] == ["owner@studio.test"]


def test_owner_adds_an_admin_over_http_and_bad_input_changes_nothing(client, database):
    owner = make_token(database, "owner@studio.test", "owner")
    for body, code in (({"email": "nope", "role": "viewer", "password": PASSWORD}, "validation_failed"),
                       ({"email": "a@studio.test", "role": "king", "password": PASSWORD}, "validation_failed"),
                       ({"email": "a@studio.test", "role": "viewer", "password": "short"}, "validation_failed"),
                       ({"email": 5, "role": "viewer", "password": PASSWORD}, "validation_failed"),
                       ({"email": ["a@studio.test"], "role": "viewer", "password": PASSWORD}, "validation_failed"),
                       ({"email": "a@studio.test", "role": ["owner"], "password": PASSWORD}, "validation_failed"),
                       ({"email": "owner@studio.test", "role": "viewer", "password": PASSWORD}, "conflict")):
        response = client.post("/admin/admins", json=body, headers=bearer(owner))
        assert response.status_code in (400, 409) and response.get_json()["error"]["code"] == code
    assert len(client.get("/admin/admins", headers=bearer(owner)).get_json()["admins"]) == 1
    created = client.post("/admin/admins", json={"email": "a@studio.test", "role": "viewer", "password": PASSWORD},
                          headers=bearer(owner))
    assert created.status_code == 201
    login_as(client, "a@studio.test")


def test_one_address_added_twice_at_once_is_one_admin_and_a_409(app, database):
    """Both requests checked for the address before either inserted it (the test holds an uncommitted row
    with it): the second insert's unique refusal is the same 409 as the check's, not a 500."""
    owner = make_token(database, "owner@studio.test", "owner")

    def add(client):
        return client.post("/admin/admins", headers=bearer(owner),
                           json={"email": "twice@studio.test", "role": "viewer", "password": PASSWORD})

    answers = at_once(app, database, [add, add], hold=(
        "INSERT INTO admin_account (email, role, password_hash, created_at) VALUES (:e, 'viewer', 'x', now())",
        {"e": "twice@studio.test"}))
    assert sorted(a.status_code for a in answers) == [201, 409], [a.get_json() for a in answers]
    assert [a for a in answers if a.status_code == 409][0].get_json()["error"]["code"] == "conflict"
    with database.session_scope() as s:
        assert s.scalars(select(AdminAccount.email).where(AdminAccount.email == "twice@studio.test")).all() == [
            "twice@studio.test"]


# --------------------------------------------------------------------------- roles, route by route


def _changing_routes(app, prefix):
    """Every route under `prefix` that changes something (POST/PUT/DELETE), with its path filled in."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        for method in sorted((rule.methods or set()) & {"POST", "PUT", "DELETE"}):
            path = re.sub(r"<int:[^>]+>", "1", rule.rule)
            path = re.sub(r"<[^>]+>", "X1", path)
            routes.append((method, path, rule.endpoint))
    return routes


# what a viewer may change: only their own session and personal tokens
OWN = {"dashboard.login", "dashboard.logout", "admin_people.create_token", "admin_people.revoke_token",
       "admin_people.account_create_token", "admin_people.account_revoke_token"}
CATALOG_AND_PEOPLE = re.compile(r"^/admin/(courses|packages|admins)(/|$)")


def _api_routes(app):
    return [r for r in _changing_routes(app, "/admin/") if not r[1].startswith("/admin/ui/") and r[2] not in OWN]


def test_a_viewer_cannot_change_anything_through_the_api(app, client, database):
    token = make_token(database, "viewer@studio.test", "viewer")
    routes = _api_routes(app)
    assert len(routes) >= 10  # every family: events, enrollments, catalog, admins, manual operations
    for method, path, endpoint in routes:
        response = client.open(path, method=method, json={"reason": "try"}, headers=bearer(token))
        assert response.status_code == 403, (method, path, response.get_data(True))
        assert response.get_json()["error"]["code"] == "forbidden"
    with database.session_scope() as s:
        assert s.scalar(select(AuditEntry.id)) is None  # nothing happened, nothing recorded


def test_a_viewer_cannot_act_on_the_dashboard(app, client, database):
    make_admin(database, "viewer@studio.test", "viewer")
    csrf = login_as(client, "viewer@studio.test")
    routes = [r for r in _changing_routes(app, "/admin/ui/") if r[2] not in OWN]
    assert len(routes) >= 4
    for method, path, endpoint in routes:
        response = client.open(path, method=method, data={"csrf_token": csrf, "reason": "try"})
        assert response.status_code == 403, (method, path)
        assert response.get_json()["error"]["code"] == "forbidden"


def test_an_operator_cannot_edit_the_catalog_or_manage_admins(app, client, database):
    token = make_token(database, "op@studio.test", "operator")
    routes = [r for r in _api_routes(app) if CATALOG_AND_PEOPLE.match(r[1])]
    assert {r[1].split("/")[2] for r in routes} == {"courses", "packages", "admins"}
    for method, path, endpoint in routes:
        response = client.open(path, method=method, json={"title": "x"}, headers=bearer(token))
        assert response.status_code == 403, (method, path)
    # and operators do act: a replay of an unknown event is a 404, not a 403
    assert client.post("/admin/events/999/replay", headers=bearer(token)).status_code == 404


def test_unauthenticated_api_calls_are_401(app, client):
    for method, path, endpoint in _api_routes(app):
        assert client.open(path, method=method, json={}).status_code == 401, (method, path)


def test_a_viewer_sees_no_action_buttons(client, app, runtime):
    db = runtime.db
    with db.session_scope() as s:
        s.add(InboxEvent(source="platform", event_id="pev_v", type="student.upserted", payload={},
                         status=InboxStatus.FAILED, last_error="boom"))
    make_admin(db, "viewer@studio.test", "viewer")
    make_admin(db, "op@studio.test", "operator")
    login_as(client, "viewer@studio.test")
    home = client.get("/admin/").get_data(True)
    assert "boom" in home and ">Replay<" not in home and "Replay all failed" not in home
    operator = app.test_client()
    login_as(operator, "op@studio.test")
    home = operator.get("/admin/").get_data(True)
    assert ">Replay<" in home and "Replay all failed" in home
