"""Money in the reports, from real checkout events: net of tax and discounts, per currency (never summed
across currencies), packages beside courses; a 100 %-off checkout fulfils."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.enums import BundleKind, CreditType
from db.models import CreditPackage, StudentCourseEnrollment
from tasks.reporting import reports
from tests import factories
from tests import inbox_api as inbox
from tests.tasks.purchases.payments_support import charge_refunded, checkout, deliver, state


def _catalog(database):
    with database.session_scope() as s:
        factories.program(s, code="SFZ", price=12000, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        s.add(CreditPackage(code="P5", title="P5 pack", price_amount=5000, credit_type=CreditType.GROUP, quantity=5))


def _sale(cs, pi, *, student, total, subtotal, tax=0, discount=0, currency="usd", package=None,
          payment_status="paid"):
    event = checkout(cs=cs, pi=pi, student=student, amount=total, package=package, payment_status=payment_status)
    event["data"]["object"].update(amount_subtotal=subtotal, currency=currency, total_details={
        "amount_discount": discount, "amount_shipping": 0, "amount_tax": tax})
    return event


def _course(database) -> dict:
    with database.session_scope() as s:
        return {c["course_code"]: c for c in reports.course_report(session=s)}["SFZ"]


@pytest.mark.parametrize("marked", [False, True])
def test_a_100_percent_off_checkout_fulfils_and_is_a_sale_worth_nothing(database, marked):
    _catalog(database)
    free = _sale("cs_free", None, student="stu_1", total=0, subtotal=12000, discount=12000,
                 payment_status="no_payment_required")
    assert deliver(database, free, marked=marked).outcome is inbox.Outcome.PROCESSED
    (enrollment,) = state(database)["enrollments"]
    assert enrollment["status"] == "active" and enrollment["lots"] == [("private", 2, 2)]
    course = _course(database)
    assert course["revenue_by_currency"] == {"usd": {"sales": 1, "subtotal": 12000, "discount": 12000, "tax": 0,
                                                     "total": 0, "refunded": 0, "net": 0}}
    assert course["revenue"] == {"gross": 0, "refunded": 0, "net": 0} and course["paid"] == 1


@pytest.mark.parametrize("marked", [False, True])
def test_a_coupon_and_a_tax_inclusive_price_are_taken_out_of_net_revenue(database, marked):
    _catalog(database)
    coupon = _sale("cs_coupon", "pi_coupon", student="stu_1", total=10000, subtotal=12000, discount=2000)
    # price 120.00 tax included: Stripe reports the 20.00 of tax inside the total
    inclusive = _sale("cs_tax", "pi_tax", student="stu_2", total=12000, subtotal=12000, tax=2000)
    for event in (coupon, inclusive):
        assert deliver(database, event, marked=marked).outcome is inbox.Outcome.PROCESSED
    with database.session_scope() as s:
        stored = {e.stripe_checkout_session_id: (e.amount_total, e.amount_subtotal, e.amount_tax, e.amount_discount)
                  for e in s.scalars(select(StudentCourseEnrollment))}
    assert stored == {"cs_coupon": (10000, 12000, 0, 2000), "cs_tax": (12000, 12000, 2000, 0)}
    deliver(database, charge_refunded(pi="pi_coupon", amount=10000, refunded=1000, refunds=[("re_c", 1000)]))
    usd = _course(database)["revenue_by_currency"]["usd"]
    assert usd == {"sales": 2, "subtotal": 24000, "discount": 2000, "tax": 2000, "total": 22000, "refunded": 1000,
                   "net": 22000 - 2000 - 1000}


def test_a_second_currency_is_reported_apart_and_never_added_to_the_first(database):
    _catalog(database)
    deliver(database, _sale("cs_usd", "pi_usd", student="stu_1", total=12000, subtotal=12000))
    deliver(database, _sale("cs_eur", "pi_eur", student="stu_2", total=11000, subtotal=11000, tax=1760,
                            currency="eur"))
    course = _course(database)
    assert set(course["revenue_by_currency"]) == {"usd", "eur"}
    assert course["revenue_by_currency"]["eur"]["net"] == 11000 - 1760
    assert course["revenue_by_currency"]["usd"]["net"] == 12000
    # the course's own currency (usd) only: the euros are not counted as dollars
    assert course["currency"] == "usd" and course["revenue"] == {"gross": 12000, "refunded": 0, "net": 12000}


def test_packages_are_reported_beside_courses(database):
    _catalog(database)
    deliver(database, _sale("cs_p1", "pi_p1", student="stu_1", total=4500, subtotal=5000, discount=500,
                            package="P5"))
    deliver(database, _sale("cs_p2", "pi_p2", student="stu_2", total=5000, subtotal=5000, package="P5"))
    deliver(database, charge_refunded(pi="pi_p2", amount=5000, refunded=5000, refunds=[("re_p2", 5000)]))
    deliver(database, _sale("cs_p3", "pi_p3", student="stu_3", total=5000, subtotal=5000, package="P5",
                            payment_status="unpaid"))
    with database.session_scope() as s:
        (package,) = reports.package_report(session=s)
    assert package["package_code"] == "P5" and package["purchases"] == {"pending": 1, "paid": 1, "failed": 0,
                                                                       "refunded": 1}
    assert package["paid"] == 2 and package["purchases_total"] == 3
    assert package["revenue_by_currency"] == {"usd": {"sales": 2, "subtotal": 10000, "discount": 500, "tax": 0,
                                                      "total": 9500, "refunded": 5000, "net": 4500}}
    assert package["revenue"] == {"gross": 9500, "refunded": 5000, "net": 4500}


def test_the_report_api_carries_packages_and_the_money_by_currency(client, runtime, admin_headers):
    _catalog(runtime.db)
    deliver(runtime.db, _sale("cs_a", "pi_a", student="stu_1", total=10000, subtotal=12000, discount=2000))
    deliver(runtime.db, _sale("cs_b", "pi_b", student="stu_2", total=5000, subtotal=5000, package="P5"))
    body = client.get("/admin/reports/courses", headers=admin_headers).get_json()
    (course,) = body["courses"]
    assert course["revenue"] == {"gross": 10000, "refunded": 0, "net": 10000}  # the existing key, as it was
    assert course["revenue_by_currency"]["usd"]["discount"] == 2000
    (package,) = body["packages"]
    assert package["package_code"] == "P5" and package["revenue_by_currency"]["usd"]["net"] == 5000


def test_a_refund_gives_its_share_of_the_tax_back_and_a_comp_is_not_a_sale(database, client, runtime,
                                                                         admin_headers):
    """Net took the whole tax off a refunded sale too: a taxed sale refunded in full reported net -2000 (the
    tax), half refunded 4000 instead of 5000. And a comp (enrolled by hand) counted as a sale."""
    _catalog(database)
    deliver(database, _sale("cs_full", "pi_full", student="stu_1", total=12000, subtotal=12000, tax=2000))
    deliver(database, _sale("cs_half", "pi_half", student="stu_2", total=12000, subtotal=12000, tax=2000))
    deliver(database, charge_refunded(pi="pi_full", amount=12000, refunded=12000, refunds=[("re_f", 12000)]))
    deliver(database, charge_refunded(pi="pi_half", amount=12000, refunded=6000, refunds=[("re_h", 6000)]))
    enrolled = client.post("/admin/enrollments", headers=admin_headers, json={
        "student_id": "stu_3", "course_code": "SFZ", "grant_bundle": False, "reason": "a prize"})
    assert enrolled.status_code == 201
    usd = _course(database)["revenue_by_currency"]["usd"]
    assert usd == {"sales": 2, "subtotal": 24000, "discount": 0, "tax": 4000, "total": 24000, "refunded": 18000,
                   "net": 0 + 5000}


def test_net_is_whole_minor_units_the_same_on_every_database(database):
    """The tax's share was a true division: PostgreSQL summed 399.999… (cut to 399) where SQLite gave 400. Each
    sale's kept share of the tax is now whole minor units (100 × 200 / 300 = 66.67 → 67): 3 × (200 − 67)."""
    _catalog(database)
    for n in range(3):
        deliver(database, _sale(f"cs_{n}", f"pi_{n}", student=f"stu_{n}", total=300, subtotal=300, tax=100))
        deliver(database, charge_refunded(pi=f"pi_{n}", amount=300, refunded=100, refunds=[(f"re_{n}", 100)]))
    usd = _course(database)["revenue_by_currency"]["usd"]
    assert (usd["total"], usd["tax"], usd["refunded"], usd["net"]) == (900, 300, 300, 399)


@pytest.mark.parametrize("settled", [False, True], ids=["payment failed", "payment settled"])
def test_a_pending_purchase_revoked_by_hand_is_a_sale_only_once_its_payment_settles(database, settled):
    """Before: revoked while its bank debit was pending, it counted as paid and its amount as revenue even when
    the payment then failed. A payment that settles after the revocation is a sale (the money came), though the
    enrollment stays revoked."""
    from tasks.purchases import manual

    with database.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
    deliver(database, checkout(payment_status="unpaid"))  # a bank debit: pending
    with database.session_scope() as s:
        eid = s.scalar(select(StudentCourseEnrollment.id))
        manual.revoke(session=s, enrollment_id=eid, cause="admin:1")
    with database.session_scope() as s:
        before = reports.course_report(session=s)[0]
    assert (before["paid"], before["revenue"]["gross"]) == (0, 0)  # not settled yet: no sale
    outcome = "succeeded" if settled else "failed"
    deliver(database, checkout(type_=f"checkout.session.async_payment_{outcome}",
                               payment_status="paid" if settled else "unpaid"))
    with database.session_scope() as s:
        e = s.get(StudentCourseEnrollment, eid)
        assert (e.status.value, e.activated_at) == ("revoked", None)  # it stays revoked either way
        sfz = reports.course_report(session=s)[0]
    assert (sfz["paid"], sfz["revenue"]["gross"], sfz["revenue"]["net"]) == ((1, 12000, 12000) if settled
                                                                            else (0, 0, 0))
