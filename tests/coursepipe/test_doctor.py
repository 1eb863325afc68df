"""`coursepipe doctor`: one line per check (ok / warn / fail), exit 1 on any fail. Stripe is the local Stripe
server over real HTTP; the database is the test database (at the migration head)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from coursepipe import doctor
from coursepipe.runtime import handler_table
from coursepipe.settings import INGRESS_SECRETS, ConfigError
from tasks.stripe_api import STRIPE_API_VERSION
from tests import factories
from tests.conftest import make_settings
from workers.publishing import publish

HANDLED = sorted(t for s, t in handler_table() if s == "stripe")
PUBLIC_URL = "https://pipe.example.test"
STRONG = "x1y2z3" + "abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def healthy(database, stripe_server):
    """A published course, a webhook endpoint as it should be, strong secrets."""
    settings = make_settings(database.url, **stripe_server.settings_changes(), public_url=PUBLIC_URL,
                             platform_webhook_secret=STRONG, admin_token=STRONG[::-1])
    with database.session_scope() as s:
        factories.program(s, code="SFZ")
    publish("course", "SFZ", unit_of_work=database.session_scope, settings=settings)
    endpoint = stripe_server.add_webhook_endpoint(url=f"{PUBLIC_URL}/webhooks/stripe", status="enabled",
                                                  enabled_events=HANDLED, api_version=STRIPE_API_VERSION)
    return settings, endpoint


def _by_name(checks) -> dict[str, doctor.Check]:
    return {c.name.split(" we_")[0]: c for c in checks}


def test_a_healthy_installation_is_ok_on_every_line(healthy, stripe_server):
    settings, endpoint = healthy
    checks = doctor.run_checks(settings, HANDLED)
    assert [c for c in checks if c.status != doctor.OK] == []
    names = [c.name for c in checks]
    assert names[:2] == ["database", "redis"] and f"stripe webhook {endpoint['id']}" in names
    assert {"STRIPE_WEBHOOK_SECRET", "PLATFORM_WEBHOOK_SECRET", "ADMIN_TOKEN", "stripe key", "stripe webhook events",
            "stripe api version", "catalog"} <= set(names)
    assert "at migration head" in checks[0].message and "test mode" in _by_name(checks)["stripe key"].message
    assert "2 Stripe object(s)" in _by_name(checks)["catalog"].message
    listed = stripe_server.calls("GET", "/v1/webhook_endpoints")
    assert listed and listed[0].headers["Stripe-Version"] == STRIPE_API_VERSION


def test_a_disabled_endpoint_a_missing_type_and_another_version_fail(healthy, stripe_server):
    settings, endpoint = healthy
    stripe_server.webhook_endpoints[endpoint["id"]].update(
        status="disabled", enabled_events=[t for t in HANDLED if t != "charge.dispute.created"],
        api_version="2020-08-27")
    checks = _by_name(doctor.run_checks(settings, HANDLED))
    assert checks["stripe webhook"].status == doctor.FAIL and "disabled" in checks["stripe webhook"].message
    assert checks["stripe webhook events"].status == doctor.FAIL
    assert checks["stripe webhook events"].message == "not listening to charge.dispute.created"
    assert checks["stripe api version"].status == doctor.FAIL and "2020-08-27" in checks["stripe api version"].message


def test_an_endpoint_listening_to_everything_is_enough_but_one_elsewhere_is_not_ours(healthy, stripe_server):
    settings, endpoint = healthy
    stripe_server.webhook_endpoints[endpoint["id"]]["enabled_events"] = ["*"]
    assert _by_name(doctor.run_checks(settings, HANDLED))["stripe webhook events"].status == doctor.OK
    stripe_server.webhook_endpoints[endpoint["id"]]["url"] = "https://elsewhere.example/webhooks/stripe"
    check = _by_name(doctor.run_checks(settings, HANDLED))["stripe webhook"]
    assert check.status == doctor.FAIL and f"no endpoint for {PUBLIC_URL}/webhooks/stripe" in check.message
    check = _by_name(doctor.run_checks(settings.with_(public_url=None), HANDLED))["stripe webhook"]
    assert check.status == doctor.FAIL and "PUBLIC_URL" in check.message


def test_a_catalog_changed_in_the_stripe_dashboard_fails(healthy, stripe_server):
    settings, _ = healthy
    (product,) = stripe_server.products.values()
    product["name"] = "Renamed in the dashboard"
    check = _by_name(doctor.run_checks(settings, HANDLED))["catalog"]
    assert check.status == doctor.FAIL and "name: Stripe has 'Renamed in the dashboard'" in check.message
    stripe_server.products.clear()
    check = _by_name(doctor.run_checks(settings, HANDLED))["catalog"]
    assert check.status == doctor.FAIL and "does not exist in Stripe" in check.message


def test_a_wrong_signing_secret_or_key_fails_and_a_short_accepted_secret_warns(database):
    settings = make_settings(database.url, platform_webhook_secret="abcdefghij-0123456789-xyz",  # 25: accepted
                             stripe_webhook_secret="not-a-whsec-but-long-enough-0123", stripe_api_key="pk_live_123")
    checks = _by_name(doctor.run_checks(settings, HANDLED))
    assert checks["PLATFORM_WEBHOOK_SECRET"].status == doctor.WARN and "25 characters, fewer than 32" in checks[
        "PLATFORM_WEBHOOK_SECRET"].message
    assert checks["STRIPE_WEBHOOK_SECRET"].status == doctor.FAIL and "whsec_" in checks["STRIPE_WEBHOOK_SECRET"].message
    assert checks["stripe key"].status == doctor.FAIL


# each starts with whsec_, so the signing secret's prefix check never decides: only strength does
SECRET_VALUES = {"short": "whsec_short", "few different": "whsec_" + "a" * 30, "24 to 31": "whsec_0123456789abcdefghij",
                 "strong": "whsec_" + STRONG}


@pytest.mark.parametrize("variable", ["STRIPE_WEBHOOK_SECRET", "PLATFORM_WEBHOOK_SECRET", "ADMIN_TOKEN",
                                      "SESSION_SECRET", "READ_API_TOKEN"])
@pytest.mark.parametrize("kind", SECRET_VALUES)
def test_a_secret_fails_exactly_when_the_ingress_refuses_to_start_with_it(variable, kind):
    value = SECRET_VALUES[kind]
    change = {"read_api_tokens": (value,)} if variable == "READ_API_TOKEN" else {variable.lower(): value}
    settings = make_settings("sqlite://", **change)
    try:
        settings.require(*INGRESS_SECRETS)
        refused = None
    except ConfigError as exc:
        refused = str(exc)
    check = _by_name(doctor.check_secrets(settings))[variable]
    assert (check.status == doctor.FAIL) == (refused is not None), (check, refused)
    if refused:
        assert refused.startswith(f"{variable} is too weak") and "refuses to start" in check.message
    else:  # what start-up accepts may only warn, and only when shorter than a generated secret
        assert check.status == (doctor.WARN if kind == "24 to 31" and variable != "STRIPE_WEBHOOK_SECRET"
                                else doctor.OK), check


def test_session_secret_is_checked_only_when_set():
    assert "SESSION_SECRET" not in _by_name(doctor.check_secrets(make_settings("sqlite://")))
    assert _by_name(doctor.check_secrets(make_settings("sqlite://", session_secret=STRONG)))[
        "SESSION_SECRET"].status == doctor.OK


def test_each_read_token_is_checked_as_the_ingress_holds_it(database):
    tokens = ("short-reader", "a-reader-of-28-characters-ok", "a-reader-of-40-characters-0123456789abcd")
    checks = _by_name(doctor.run_checks(make_settings(database.url, read_api_tokens=tokens), HANDLED))
    assert checks["READ_API_TOKEN #1"].status == doctor.FAIL and "refuses to start" in checks["READ_API_TOKEN #1"].message
    assert checks["READ_API_TOKEN #2"].status == doctor.WARN and "28 characters" in checks["READ_API_TOKEN #2"].message
    assert checks["READ_API_TOKEN #3"].status == doctor.OK
    assert "READ_API_TOKEN" not in _by_name(doctor.run_checks(make_settings(database.url), HANDLED))


def test_redis_is_checked_when_set(database, redis_url):
    up = _by_name(doctor.run_checks(make_settings(database.url, redis_url=redis_url), HANDLED))["redis"]
    assert up.status == doctor.OK and up.message == "reachable"
    down = _by_name(doctor.run_checks(make_settings(database.url, redis_url="redis://127.0.0.1:1/0"), HANDLED))
    assert down["redis"].status == doctor.FAIL and "unreachable" in down["redis"].message


def test_the_command_prints_one_line_a_check_and_exits_1_on_a_fail(tmp_path, stripe_server):
    behind = tmp_path / "old.db"
    sqlite3.connect(behind).close()  # a database never migrated
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PUBLIC_URL")}
    env.update(DATABASE_URL=f"sqlite:///{behind}", STRIPE_WEBHOOK_SECRET="whsec_" + STRONG,
               PLATFORM_WEBHOOK_SECRET=STRONG, ADMIN_TOKEN=STRONG[::-1], PUBLIC_URL=PUBLIC_URL,
               **stripe_server.settings_changes_env())
    stripe_server.add_webhook_endpoint(url=f"{PUBLIC_URL}/webhooks/stripe", status="enabled",
                                       enabled_events=HANDLED, api_version=STRIPE_API_VERSION)
    done = subprocess.run([sys.executable, "-m", "coursepipe.cli", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert lines[0].startswith("fail database: at migration none") and "coursepipe db upgrade" in lines[0]
    assert all(line.split(" ", 1)[0] in ("ok", "warn", "fail") for line in lines[:-1])
    assert "ok   stripe webhook events: listening to every handled type" in lines
    assert "warn catalog: not checked: the database is not ready" in lines
    assert lines[-1].startswith(f"{len(lines) - 1} checks: 1 failed")
