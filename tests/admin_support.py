"""Admin accounts for tests: made directly, logged in through the real form, or used as bearer tokens."""
from __future__ import annotations

import re
import threading
import time

from sqlalchemy import text

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


def at_once(app, database, calls, hold: tuple[str, dict] | None = None) -> list:
    """Run `calls` (each takes a test client and returns its response) in threads at the same moment; the
    responses, in order. On PostgreSQL, `hold` (a statement and its parameters) runs first in a transaction
    of the test's own, rolled back only once every call waits on a lock it took: so each call has made its
    checks before any of them could write. SQLite runs writers one at a time (BEGIN IMMEDIATE): no hold."""
    answers = [None] * len(calls)

    def run(k):
        answers[k] = calls[k](app.test_client())

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    holding = hold is not None and database.dialect == "postgresql"
    with database.engine.connect() as holder:
        if holding:
            holder.execute(text(hold[0]), hold[1])
        for thread in threads:
            thread.start()
        if holding:
            waiting = 0
            for _ in range(500):  # bounded: up to 10 s for every call to queue behind the held lock
                with database.engine.connect() as probe:  # (one transaction sees one snapshot of pg_stat_activity)
                    waiting = probe.execute(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                                                 "'Lock' AND datname = current_database()")).scalar()
                if waiting == len(calls):
                    break
                time.sleep(0.02)
            assert waiting == len(calls), f"{waiting} of {len(calls)} calls waited on the held lock"
        holder.rollback()
    for thread in threads:
        thread.join(30)
    return answers
