"""Property: one student's purchase / refund / dispute events (for a course, or a package), in any order
and any number of times, leave the same final state: the one docs/fulfilment.md derives from the facts.

Runs on SQLite and PostgreSQL (the `database` fixture); each example starts from empty tables.
"""
from __future__ import annotations

import copy
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.enums import BundleKind, CreditType
from db.models import CreditPackage
from tests import factories
from tests.conftest import _truncate
from tests.tasks.purchases.payments_support import (
    charge_refunded,
    checkout,
    deliver,
    dispute_closed,
    dispute_created,
    refund_created,
    state,
)

PAID = 12000
PRIVATE, GROUP = 4, 1

# every fact that may happen to the purchase, by name
REFUND_EVENTS = {
    "charge_partial": lambda: charge_refunded(refunded=3000, refunds=[("re_1", 3000)]),
    "created_re1": lambda: refund_created(refund_id="re_1", amount=3000),
    "charge_full": lambda: charge_refunded(refunded=PAID, refunds=[("re_1", 3000), ("re_2", 9000)]),
    "created_re2": lambda: refund_created(refund_id="re_2", amount=9000),
}


@st.composite
def scenarios(draw):
    refunds = draw(st.sets(st.sampled_from(sorted(REFUND_EVENTS))))
    dispute = draw(st.sampled_from(["none", "open", "won", "lost", "closed_only_won", "closed_only_lost"]))
    names = ["purchase", *sorted(refunds)]
    if dispute != "none" and not dispute.startswith("closed_only"):
        names.append("dispute_created")
    if dispute in ("won", "lost", "closed_only_won", "closed_only_lost"):
        names.append(f"dispute_closed_{dispute.rsplit('_', 1)[-1]}")
    order = draw(st.permutations(names))
    # each event delivered 1-3 times: a redelivery (same Stripe event id) or a twin (new id, same content)
    plan = []
    for name in order:
        plan.append((name, "first"))
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            plan.append((name, draw(st.sampled_from(["redelivery", "twin"]))))
    return refunds, dispute, draw(st.permutations(plan)) if draw(st.booleans()) else plan


def _event(name: str, kind: str = "course") -> dict:
    if name == "purchase":
        return checkout(cs="cs_prop", pi="pi_1", amount=PAID, package="P4" if kind == "package" else None)
    if name in REFUND_EVENTS:
        return REFUND_EVENTS[name]()
    if name == "dispute_created":
        return dispute_created()
    return dispute_closed(status=name.rsplit("_", 1)[-1])


def expected(refunds: set[str], dispute: str) -> dict:
    """What the documented policy says, computed from the facts alone."""
    amounts, charge_total = {}, 0
    for name in refunds:
        event = REFUND_EVENTS[name]()["data"]["object"]
        if event["object"] == "refund":
            amounts[event["id"]] = event["amount"]
        else:
            charge_total = max(charge_total, event["amount_refunded"])
            amounts.update({r["id"]: r["amount"] for r in event["refunds"]["data"]})
    refunded = max(charge_total, sum(amounts.values()))
    lost = dispute.endswith("lost")
    if refunded >= PAID or lost:
        return {"status": "revoked", "refunded": refunded, "steps": ["cancelled"] * 3,
                "lots": [("group", GROUP, 0), ("private", PRIVATE, 0)]}
    status = "suspended" if dispute == "open" else "active"
    return {"status": status, "refunded": refunded, "steps": ["unbooked"] * 3,
            "lots": [("group", GROUP, GROUP - GROUP * refunded // PAID),
                     ("private", PRIVATE, PRIVATE - PRIVATE * refunded // PAID)]}


def _play(database, plan, kind: str = "course") -> dict:
    _truncate(database)
    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, PRIVATE), (BundleKind.GROUP_CREDIT, GROUP)))
        s.add(CreditPackage(code="P4", title="Four", price_amount=PAID, credit_type=CreditType.PRIVATE,
                            quantity=PRIVATE))
    firsts: dict[str, dict] = {}
    for name, how in plan:
        if name not in firsts:
            event = firsts[name] = _event(name, kind)
        elif how == "redelivery":
            event = firsts[name]
        else:
            event = copy.deepcopy(firsts[name])
            event["id"] = f"evt_{uuid.uuid4().hex[:20]}"
        deliver(database, event)
    return state(database)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_final_state_depends_on_the_facts_not_on_order_or_repetition(database, scenario):
    refunds, dispute, plan = scenario
    want = expected(refunds, dispute)
    # the drawn order and its reverse: every pair of events is seen both ways round
    for order in (plan, plan[::-1]):
        final = _play(database, order)
        [enrollment] = final["enrollments"]
        got = {k: enrollment[k] for k in ("status", "refunded", "steps", "lots")}
        assert got == want, (order, got, want)
        assert final["balances"] == {"group": want["lots"][0][2], "private": want["lots"][1][2]}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_a_package_purchase_converges_the_same_way(database, scenario):
    """Packages: refunded in full or a lost dispute → `refunded`, credits revoked; partial → proportional."""
    refunds, dispute, plan = scenario
    course = expected(refunds, dispute)
    revoked = course["status"] == "revoked"
    want = {"status": "refunded" if revoked else "paid", "refunded": course["refunded"],
            "private": 0 if revoked else PRIVATE - PRIVATE * course["refunded"] // PAID}
    for order in (plan, plan[::-1]):
        final = _play(database, order, kind="package")
        [package] = final["packages"]
        got = {"status": package["status"], "refunded": package["refunded"], "private": final["balances"]["private"]}
        assert got == want, (order, got, want)
