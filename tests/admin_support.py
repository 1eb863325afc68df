"""Admin accounts for tests: made directly, logged in through the real form, or used as bearer tokens."""
from __future__ import annotations

import re

from tasks.admins import accounts

PASSWORD = "correct horse battery staple"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def make_admin(database, email: str, role: str, password: str = PASSWORD) -> int:
    with database.session_scope() as s:
        return accounts.add_admin(session=s, email=email, role=role, password=password).id


def make_token(database, email: str, role: str) -> str:
    admin_id = make_admin(database, email, role)
    with database.session_scope() as s:
        return accounts.create_token(session=s, admin_id=admin_id, name="tests")[1]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def login_as(client, email: str, password: str = PASSWORD) -> str:
    """Log in through the form; returns the CSRF token of the new session."""
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={"email": email, "password": password,
                                                 "csrf_token": csrf_of(page.get_data(True))})
    assert response.status_code == 302, response.get_data(True)
    return csrf_of(client.get("/admin/").get_data(True))


def browser_login(page, base: str, email: str, password: str = PASSWORD) -> None:
    """Log into the dashboard in a real browser (playwright page) with the login form."""
    page.goto(f"{base}/admin/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
