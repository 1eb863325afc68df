"""`coursepipe doctor`: is this installation fit to run? One line per check — ok, warn or fail.

Checks: the database at the migration head, Redis reachable (when REDIS_URL is set), the secrets'
strength, the Stripe key's mode, the Stripe webhook endpoint at PUBLIC_URL/webhooks/stripe (enabled,
listening to every handled type, naming the pinned API version), and the catalog in sync with Stripe.
Any `fail` makes the command exit 1. Stripe is asked with the real client (STRIPE_API_BASE honoured),
never inside a transaction.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from coursepipe.cli_support import not_usable
from coursepipe.settings import INGRESS_SECRETS, MIN_SECRET_DISTINCT, MIN_SECRET_LENGTH, ConfigError, Settings
from coursepipe.settings import checked_redis_url, too_weak

OK, WARN, FAIL = "ok", "warn", "fail"
WEBHOOK_PATH = "/webhooks/stripe"
# start-up accepts 24 characters (MIN_SECRET_LENGTH); fewer than this is a warning, as generated ones have more
RECOMMENDED_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    message: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.message}"


def check_database(settings: Settings) -> Check:
    import logging

    from db.database import Database
    from db.migrate import current_revision, head_revision, migration_advice

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its set-up chatter is not a check's line
    if settings.is_sqlite:
        path = settings.database_url.split(":///", 1)[-1]
        if path and path != ":memory:" and not os.path.exists(path):  # connecting would create an empty file
            return Check(FAIL, "database", f"no database file {path}: run `coursepipe db upgrade`")
    try:
        database = Database(settings.database_url)
    except Exception as exc:
        return Check(FAIL, "database", not_usable(exc))
    try:
        current, head = current_revision(database.engine), head_revision()
    except Exception as exc:
        return Check(FAIL, "database", f"unreachable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    finally:
        database.dispose()
    advice = migration_advice(current)
    if advice is not None:
        return Check(FAIL, "database", advice)
    return Check(OK, "database", f"{database.dialect}, at migration head {head}")


def check_redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check(OK, "redis", "REDIS_URL not set: the in-process broker (one process only)")
    import redis

    try:
        checked_redis_url(settings.redis_url)
    except ConfigError as exc:
        return Check(FAIL, "redis", str(exc))
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        return Check(FAIL, "redis", f"unreachable at REDIS_URL: {type(exc).__name__}: {exc}")
    finally:
        client.close()
    return Check(OK, "redis", "reachable")


def _secret_check(name: str, value: str, *, signing_secret: bool = False) -> Check:
    """One secret as start-up holds it (`too_weak` refuses it: fail), then as the doctor advises (warn)."""
    if too_weak(value):
        return Check(FAIL, name, f"too weak: coursepipe refuses to start with it (at least {MIN_SECRET_LENGTH} characters, "
                                 f"{MIN_SECRET_DISTINCT} of them different; use e.g. `openssl rand -hex 32`)")
    if signing_secret:  # Stripe makes it: its length is Stripe's, its prefix tells it is one
        if not value.startswith("whsec_"):
            return Check(FAIL, name, "is not a Stripe signing secret (whsec_…): every webhook would be refused")
        return Check(OK, name, "a Stripe signing secret")
    if len(value) < RECOMMENDED_SECRET_LENGTH:  # accepted, but with less margin than a generated one has
        return Check(WARN, name, f"{len(value)} characters, fewer than {RECOMMENDED_SECRET_LENGTH}; "
                                 f"use e.g. `openssl rand -hex 32`")
    return Check(OK, name, f"{len(value)} characters")


def check_secrets(settings: Settings) -> list[Check]:
    """Every secret the ingress checks at start-up (`Settings.start_up_secrets`), by the same rule: what it
    refuses fails here, and only what it accepts may warn."""
    secrets = settings.start_up_secrets(*INGRESS_SECRETS)
    several_tokens = sum(name == "READ_API_TOKEN" for name, _ in secrets) > 1
    checks, tokens = [], 0
    for name, value in secrets:
        if name == "READ_API_TOKEN" and several_tokens:
            tokens += 1
            name = f"READ_API_TOKEN #{tokens}"
        if not value:
            if name in INGRESS_SECRETS:
                checks.append(Check(FAIL, name, "not set: the ingress refuses to start"))
            continue  # SESSION_SECRET unset: each process signs with a random one
        checks.append(_secret_check(name, value, signing_secret=name == "STRIPE_WEBHOOK_SECRET"))
    return checks


def check_stripe_mode(settings: Settings) -> Check:
    from tasks.stripe_api import key_mode

    if not settings.stripe_api_key:
        return Check(WARN, "stripe key", "STRIPE_API_KEY not set: publishing, reconcile, ownership checks and "
                                         "dispute evidence are off, and no event is held against a mode")
    mode = key_mode(settings.stripe_api_key)
    if mode is None:
        return Check(FAIL, "stripe key", "STRIPE_API_KEY is not a secret or restricted key (sk_/rk_ live or test)")
    return Check(OK, "stripe key", f"{mode} mode: events of the other mode are ignored")


def check_webhook_endpoint(settings: Settings, client: Any, handled_types: Iterable[str]) -> list[Check]:
    from tasks.stripe_api import STRIPE_API_VERSION

    if not settings.public_url:
        return [Check(FAIL, "stripe webhook", "PUBLIC_URL not set: cannot tell which endpoint is ours")]
    url = settings.public_url.rstrip("/") + WEBHOOK_PATH
    endpoints = [e for e in client.v1.webhook_endpoints.list(params={"limit": 100}).auto_paging_iter()]
    ours = [e for e in endpoints if (e.url or "").rstrip("/") == url]
    if not ours:
        return [Check(FAIL, "stripe webhook", f"no endpoint for {url} ({len(endpoints)} other endpoint(s))")]
    endpoint = next((e for e in ours if e.status == "enabled"), ours[0])
    checks = []
    name = f"stripe webhook {endpoint.id}"
    checks.append(Check(OK, name, f"{url} enabled") if endpoint.status == "enabled"
                  else Check(FAIL, name, f"{url} is {endpoint.status}: Stripe sends it nothing"))
    listened = set(endpoint.enabled_events or [])
    missing = sorted(set(handled_types) - listened) if "*" not in listened else []
    checks.append(Check(FAIL, "stripe webhook events", f"not listening to {', '.join(missing)}") if missing
                  else Check(OK, "stripe webhook events", "listening to every handled type"))
    version = endpoint.api_version
    if version == STRIPE_API_VERSION:
        checks.append(Check(OK, "stripe api version", f"the endpoint names {version}, the pinned version"))
    else:
        checks.append(Check(FAIL, "stripe api version", f"the endpoint names {version or 'no version (the account default)'}, "
                                                        f"the pinned version is {STRIPE_API_VERSION}: payloads may be "
                                                        f"shaped otherwise; create the endpoint with "
                                                        f"--api-version {STRIPE_API_VERSION}"))
    return checks


def check_catalog(settings: Settings, client: Any) -> Check:
    import stripe

    from db.database import Database
    from tasks.catalog import sync
    from tasks.stripe_api import key_mode

    database = Database(settings.database_url)
    try:
        with database.session_scope() as session:
            expected, unpublished = sync.expected_objects(session, key_mode(settings.stripe_api_key))
    finally:
        database.dispose()
    found: list[str] = []
    for item in expected:  # outside any transaction
        service = client.v1.products if item.object_type == "product" else client.v1.prices
        try:
            obj = service.retrieve(item.object_id).to_dict()
        except stripe.InvalidRequestError as exc:
            if getattr(exc, "code", None) != "resource_missing":
                raise
            obj = None
        found += [f"{item.kind} {item.code}: {d}" for d in sync.differences(item, obj)]
    if found:
        return Check(FAIL, "catalog", "out of sync with Stripe: " + "; ".join(found[:5])
                     + (f" (and {len(found) - 5} more)" if len(found) > 5 else ""))
    if unpublished:
        return Check(WARN, "catalog", f"{len(expected)} Stripe object(s) as published; changes not published yet: "
                                      f"{', '.join(unpublished)} (`coursepipe courses publish CODE`)")
    return Check(OK, "catalog", f"{len(expected)} Stripe object(s) as published")


def _stripe_checks(settings: Settings, handled_types: Iterable[str], *, catalog: bool) -> list[Check]:
    import stripe

    from tasks.stripe_api import key_mode, stripe_client

    if not settings.stripe_api_key or key_mode(settings.stripe_api_key) is None:
        return [Check(WARN, "stripe", "no usable STRIPE_API_KEY: the webhook endpoint and the catalog are not checked")]
    client = stripe_client(settings)
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("stripe webhook", lambda: check_webhook_endpoint(settings, client, handled_types))]
    if catalog:
        steps.append(("catalog", lambda: [check_catalog(settings, client)]))
    checks = []
    for name, run in steps:
        try:
            checks += run()
        except stripe.StripeError as exc:
            checks.append(Check(FAIL, name, f"Stripe refused or is unreachable: {type(exc).__name__}: "
                                            f"{exc.user_message or exc}"))
    if not catalog:
        checks.append(Check(WARN, "catalog", "not checked: the database is not ready"))
    return checks


def run_checks(settings: Settings, handled_types: Iterable[str]) -> list[Check]:
    """Every check, in order; each one's failure is its own line, never an exception."""
    database = check_database(settings)
    checks = [database, check_redis(settings), *check_secrets(settings), check_stripe_mode(settings)]
    checks += _stripe_checks(settings, handled_types, catalog=database.status != FAIL)
    return checks
