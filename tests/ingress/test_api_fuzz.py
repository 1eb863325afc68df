"""Schemathesis against the live app on PostgreSQL (real HTTP): generated requests to every platform-facing
route (`/v1/…`, `/webhooks/…`, `/openapi.json`) and every admin JSON route (`/admin/…` but the dashboard's
pages) answer without a server error, with a documented status and a body matching its schema. (A well-formed request may still be refused by a business rule — an
unknown course, a window in the wrong order — so "schema-valid means accepted" is not checked.)"""
from __future__ import annotations

import pytest
import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance
import hypothesis
from hypothesis import HealthCheck

from ingress import limits
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.ingress.test_selling import READ, on_sale  # noqa: F401  (fixture)
from tests.netutil import http_server

pytestmark = pytest.mark.postgres

EXAMPLES = 8  # per operation: bounded, the suite stays quick


@pytest.fixture
def db_backend():
    return "postgres"


@pytest.fixture
def settings(database, stripe_server, monkeypatch):  # the runtime's: the local Stripe server and a read token
    # the generated requests without a token would trip the failed-authentication limit, and every request
    # after them would be its 429: the limit is raised for this test
    monkeypatch.setattr(limits, "AUTH_FAILURES", "100000 per minute")
    return make_settings(database.url, read_api_tokens=("selling-reader-0123456789abcdef",), **stripe_server.settings_changes())


@pytest.fixture
def live_api(app, on_sale):  # noqa: F811
    with http_server(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def _token_for(path: str) -> dict | None:
    if path.startswith("/v1/"):
        return READ
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"} if path.startswith("/admin/") else None


def test_platform_and_admin_routes_hold_their_contract(live_api):
    operations = [result.ok() for result in
                  live_api.include(path_regex=r"^/(v1/|webhooks/|openapi\.json|admin/(?!ui))").get_all_operations()]
    assert len(operations) >= 45
    failures = []
    for operation in operations:
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))
        def holds(case):
            case.call_and_validate(headers=_token_for(case.path),
                                   excluded_checks=[positive_data_acceptance])

        try:
            holds()
        except BaseException as exc:  # (schemathesis' FailureGroup) every operation is tried; all failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
