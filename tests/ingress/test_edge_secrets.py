"""Secrets and sessions: a session key of its own, failed authentications rate limited, /readyz's details for
admins only, a private SQLite file."""
from __future__ import annotations

import os
import stat

from db.database import Database
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.ingress.test_dashboard import csrf_of


def test_the_session_key_is_not_derived_from_the_admin_token(app, runtime):
    import hashlib
    import hmac

    derived = hmac.new(ADMIN_TOKEN.encode(), b"coursepipe dashboard session v1", hashlib.sha256).hexdigest()
    assert app.config["SECRET_KEY"] not in (derived, ADMIN_TOKEN)
    from ingress.app import create_app

    # random per process (per app) unless SESSION_SECRET is set
    assert create_app(runtime.settings, runtime=runtime).config["SECRET_KEY"] != app.config["SECRET_KEY"]
    fixed = runtime.settings.with_(session_secret="s3ss10n-" + "k3y-0123456789abcdef")
    assert create_app(fixed, runtime=runtime).config["SECRET_KEY"] == fixed.session_secret


def test_failed_bearer_tokens_are_rate_limited_then_even_the_right_one_waits(client):
    codes = [client.get("/admin/events", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
             for i in range(20)]
    assert codes == [401] * 20
    refused = client.get("/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "rate_limited"
    assert client.get("/healthz").status_code == 200  # only /admin and /v1 are limited


def test_behind_a_trusted_proxy_the_limit_counts_each_client_not_the_proxy(runtime):
    """Before: behind a proxy every client was the proxy's address, so one client's 21 wrong tokens a minute
    locked the platform's valid token out of /v1 too."""
    from ingress.app import create_app

    proxied = create_app(runtime.settings.with_(trusted_proxies=1), runtime=runtime).test_client()
    via_proxy = {"REMOTE_ADDR": "10.0.0.5"}
    for i in range(21):
        proxied.get("/admin/events", headers={"Authorization": f"Bearer wrong-{i}",
                                              "X-Forwarded-For": "203.0.113.9"}, environ_base=via_proxy)
    hostile = proxied.get("/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                    "X-Forwarded-For": "203.0.113.9"}, environ_base=via_proxy)
    assert hostile.status_code == 429
    platform = proxied.get("/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                     "X-Forwarded-For": "198.51.100.7"}, environ_base=via_proxy)
    assert platform.status_code == 200


def test_trusted_proxies_take_the_address_only_not_the_scheme(runtime):
    """ProxyFix trusts X-Forwarded-Proto by default: a forged `http` would have taken the dashboard cookie's
    Secure flag off (COOKIE_SECURE=auto follows the scheme, which gunicorn's forwarded_allow_ips sets)."""
    from flask import request

    from ingress.app import create_app

    app = create_app(runtime.settings.with_(trusted_proxies=1), runtime=runtime)
    app.add_url_rule("/seen", "seen", lambda: {"scheme": request.scheme, "address": request.remote_addr})
    seen = app.test_client().get("/seen", headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "http"},
                                 environ_base={"REMOTE_ADDR": "10.0.0.5"}, base_url="https://localhost")
    assert seen.get_json() == {"scheme": "https", "address": "198.51.100.7"}


def test_without_trusted_proxies_a_forged_forwarded_for_does_not_escape_the_limit(client):
    for i in range(20):
        client.get("/admin/events", headers={"Authorization": f"Bearer wrong-{i}", "X-Forwarded-For": f"192.0.2.{i}"})
    refused = client.get("/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}",
                                                   "X-Forwarded-For": "192.0.2.200"})
    assert refused.status_code == 429


def test_successful_requests_do_not_count(client, admin_headers):
    for _ in range(40):
        assert client.get("/admin/events", headers=admin_headers).status_code == 200


def test_failed_dashboard_logins_are_rate_limited(client):
    csrf = csrf_of(client.get("/admin/login").get_data(True))
    codes = [client.post("/admin/login", data={"email": "", "password": f"guess-{i}", "csrf_token": csrf}).status_code
             for i in range(21)]
    assert codes[:20] == [401] * 20 and codes[20] == 429
    right = client.post("/admin/login", data={"email": "", "password": ADMIN_TOKEN, "csrf_token": csrf})
    assert right.status_code == 429


def test_concurrent_logins_are_counted_before_their_password_is_checked(app):
    """40 logins at once from one address: the failures counted after each answer would let them all be
    checked (an argon2 hash each); counted before, at most 20 are checked and the rest are 429."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    clients = [app.test_client() for _ in range(40)]
    tokens = [csrf_of(c.get("/admin/login").get_data(True)) for c in clients]
    start = threading.Barrier(len(clients))

    def attempt(n):
        start.wait()
        return clients[n].post("/admin/login", data={"email": "someone@studio.test", "password": f"guess-{n}",
                                                     "csrf_token": tokens[n]}).status_code

    with ThreadPoolExecutor(len(clients)) as pool:
        codes = list(pool.map(attempt, range(len(clients))))
    # at most 20 checked: the in-memory counter (limits' MemoryStorage) reads its total back outside its lock, so
    # two racing hits can both read the later total and one fewer may be let through, never one more
    assert set(codes) == {401, 429} and 15 <= codes.count(401) <= 20, codes


def test_readyz_hides_the_details_from_anonymous_callers(database, runtime, app, monkeypatch):
    def down():
        raise OSError("connection to server at 10.1.2.3, port 5432 failed: role secret_role")

    monkeypatch.setattr(runtime.db, "ping", down)
    client = app.test_client()
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503
    text = anonymous.get_data(as_text=True)
    assert "10.1.2.3" not in text and "secret_role" not in text and "database" in text
    admin = client.get("/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert admin.status_code == 503 and "secret_role" in admin.get_data(as_text=True)


def test_a_new_sqlite_file_is_private(tmp_path):
    path = tmp_path / "new.db"
    db = Database(f"sqlite:///{path}")
    db.ping()
    db.dispose()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert make_settings("sqlite://").host == "127.0.0.1"


def test_with_redis_the_failures_are_counted_in_redis_across_ingress_processes(runtime, redis_url, redis_namespace):
    """Two apps on one REDIS_URL stand for two gunicorn workers: a guesser spreading over them gains nothing."""
    import redis

    from ingress.app import create_app

    settings = runtime.settings.with_(redis_url=redis_url, redis_namespace=redis_namespace)
    first, second = (create_app(settings, runtime=runtime).test_client() for _ in range(2))
    csrf = csrf_of(first.get("/admin/login").get_data(True))
    codes = [client.get("/admin/events", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
             for i in range(10) for client in (first, second)]
    assert codes == [401] * 20
    assert list(redis.Redis.from_url(redis_url).scan_iter(f"*{redis_namespace}:limits*")), "no counter in Redis"
    refused = second.get("/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "rate_limited"
    login = first.post("/admin/login", data={"email": "", "password": ADMIN_TOKEN, "csrf_token": csrf})
    assert login.status_code == 429  # the dashboard's login form counts against the same address
    # a third app (a restarted worker) starts with the same count
    assert create_app(settings, runtime=runtime).test_client().get("/v1/courses").status_code == 429


def test_with_redis_failed_dashboard_logins_are_limited(runtime, redis_url, redis_namespace):
    from ingress.app import create_app

    settings = runtime.settings.with_(redis_url=redis_url, redis_namespace=redis_namespace)
    client = create_app(settings, runtime=runtime).test_client()
    csrf = csrf_of(client.get("/admin/login").get_data(True))
    codes = [client.post("/admin/login", data={"email": "", "password": f"guess-{i}", "csrf_token": csrf}).status_code
             for i in range(21)]
    assert codes[:20] == [401] * 20 and codes[20] == 429


def test_a_redis_url_on_a_unix_socket_counts_failures_in_that_redis(runtime, tmp_path):
    """REDIS_URL=unix://… is read by redis-py (the broker, the scheduler); the rate limiter's library calls that
    scheme `redis+unix://`. Before: the ingress failed to start with `unknown storage scheme`."""
    import shutil
    import subprocess

    import pytest
    import redis

    from ingress.app import create_app
    from tests.netutil import wait_until

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: no Redis on a Unix socket to start")
    socket_path = tmp_path / "redis.sock"
    process = subprocess.Popen([server, "--port", "0", "--unixsocket", str(socket_path), "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"unix://{socket_path}"
        assert wait_until(lambda: socket_path.exists(), timeout=20), "redis-server did not open its socket"
        client = create_app(runtime.settings.with_(redis_url=url), runtime=runtime).test_client()
        codes = [client.get("/admin/events", headers={"Authorization": f"Bearer wrong-{i}"}).status_code
                 for i in range(20)]
        assert codes == [401] * 20
        assert client.get("/admin/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 429
        assert list(redis.Redis.from_url(url).scan_iter("*limits*")), "no counter in the socket's Redis"
    finally:
        process.terminate()
        process.wait(timeout=20)
