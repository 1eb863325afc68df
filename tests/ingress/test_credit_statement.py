"""GET /v1/students/<id>/credits/statement: each ledger entry in words, a running balance that ends at the
balance the read API reports, expired lots on a line of their own."""
from __future__ import annotations

from datetime import timedelta

from db.enums import BookingStatus, BundleKind, CreditType
from db.models import Booking
from db.types import utcnow
from tasks.ledger import credits
from tests import factories
from tests.admin_support import bearer, make_token
from tests.tasks.purchases.payments_support import charge_refunded, checkout, deliver


def test_the_statement_explains_every_credit(client, runtime, admin_headers):
    db = runtime.db
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.PRIVATE_CREDIT, 2),))
        factories.group_class(s, id="gc_x", title="Salsa basics")
    deliver(db, checkout())
    with db.session_scope() as s:
        old = credits.issue_credits(session=s, student_id="stu_1", credit_type=CreditType.GROUP, quantity=2,
                                    cause="old-promo", expires_at=utcnow() - timedelta(days=1))
        old.created_at = utcnow() - timedelta(days=30)
        s.add(Booking(id="bk_1", student_id="stu_1", class_id="gc_x", status=BookingStatus.ACTIVE,
                      credit_type=CreditType.PRIVATE))
        s.flush()
        credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.PRIVATE, booking_id="bk_1")
        credits.release_credit(session=s, booking_id="bk_1")
    operator = bearer(make_token(db, "op@studio.test", "operator"))
    assert client.post("/admin/students/stu_1/credits", headers=operator, json={
        "kind": "group", "quantity": 1, "reason": "birthday"}).status_code == 201

    response = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers)
    assert response.status_code == 200
    body = response.get_json()
    lines = [(e["entry_type"], e["quantity"], e["balance"], e["description"]) for e in body["entries"]]
    assert lines == [
        ("grant", 2, 2, "2 group credits grant: old-promo"),
        ("expire", -2, 0, f"2 group credits of lot {body['entries'][0]['id']} expired unused"),
        ("grant", 2, 2, "2 private credits in the bundle of SFZ (enrollment 1)"),
        ("consume", -1, 1, "1 private credit used: Salsa basics on "
         + body["entries"][3]["description"].split(" on ")[1]),
        ("release", 1, 2, "1 private credit returned: booking bk_1 cancelled in time"),
        ("grant", 1, 1, "1 group credit added by the studio: birthday"),  # the admin is not named
    ]
    assert "(booking bk_1)" in body["entries"][3]["description"]
    balances = client.get("/v1/students/stu_1/credits", headers=admin_headers).get_json()["balances"]
    assert body["balances"] == balances == {"group": 1, "private": 2}
    assert body["entries"][-1]["balances"] == balances


def test_a_refund_and_an_unknown_student_in_the_statement(client, runtime, admin_headers):
    db = runtime.db
    with db.session_scope() as s:
        factories.program(s, bundle=((BundleKind.GROUP_CREDIT, 3),))
    deliver(db, checkout())
    deliver(db, charge_refunded())
    body = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers).get_json()
    assert [(e["quantity"], e["balance"]) for e in body["entries"]] == [(3, 3), (-3, 0)]
    assert "was revoked (refunded, a dispute lost, or by the studio)" in body["entries"][1]["description"]
    empty = client.get("/v1/students/nobody/credits/statement", headers=admin_headers)
    assert empty.status_code == 200 and empty.get_json()["entries"] == []
    assert client.get("/v1/students/stu_1/credits/statement").status_code == 401


def test_a_long_statement_reads_what_it_names_in_a_few_queries(client, runtime, admin_headers):
    """60 credit bookings, each naming its class: the statement reads the classes in one query, not one each."""
    import sqlalchemy as sa

    db = runtime.db
    with db.session_scope() as s:
        factories.student(s)
        credits.issue_credits(session=s, student_id="stu_1", credit_type=CreditType.GROUP, quantity=60,
                              cause="promo")
        for n in range(60):
            factories.group_class(s, id=f"gc_{n}", title=f"Class {n}")
            s.add(Booking(id=f"bk_{n}", student_id="stu_1", class_id=f"gc_{n}", status=BookingStatus.ACTIVE,
                          credit_type=CreditType.GROUP))
            s.flush()
            credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.GROUP, booking_id=f"bk_{n}")
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", count)
    try:
        body = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers).get_json()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", count)
    assert [e["description"].split(" on ")[0] for e in body["entries"][1:]] == [
        f"1 group credit used: Class {n}" for n in range(60)]
    assert len([q for q in statements if "FROM booking" in q or "JOIN booking" in q]) == 1
    assert len(statements) <= 10, statements


def test_a_lot_expires_with_what_it_held_then_and_a_credit_returned_to_it_afterwards_changes_nothing(
        client, runtime, admin_headers):
    """The expiry line took off what the lot holds now: 5 granted, 1 used, expired, the booking cancelled in time
    afterwards (its credit back on the expired lot) read "expire -5" and a balance of -1."""
    db = runtime.db
    now = utcnow()
    with db.session_scope() as s:
        factories.student(s)
        factories.group_class(s, id="gc_x", title="Salsa basics")
        lot = credits.issue_credits(session=s, student_id="stu_1", credit_type=CreditType.GROUP, quantity=5,
                                    cause="promo", expires_at=now + timedelta(days=1))
        lot.created_at = now - timedelta(days=30)
        s.add(Booking(id="bk_1", student_id="stu_1", class_id="gc_x", status=BookingStatus.ACTIVE,
                      credit_type=CreditType.GROUP))
        s.flush()
        used = credits.consume_credit(session=s, student_id="stu_1", credit_type=CreditType.GROUP, booking_id="bk_1")
        used.created_at = now - timedelta(days=20)
        lot.expires_at = now - timedelta(days=10)
    with db.session_scope() as s:
        credits.release_credit(session=s, booking_id="bk_1")  # after the expiry
    body = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers).get_json()
    lines = [(e["entry_type"], e["quantity"], e["balance"], e["counted"]) for e in body["entries"]]
    assert lines == [("grant", 5, 5, True), ("consume", -1, 4, True), ("expire", -4, 0, True),
                     ("release", 1, 0, False)]
    assert "4 group credits of lot" in body["entries"][2]["description"]
    assert body["entries"][3]["description"].endswith("(its lot had expired: no change)")
    assert body["balances"]["group"] == 0
    assert client.get("/v1/students/stu_1/credits", headers=admin_headers).get_json()["balances"]["group"] == 0


def test_a_booking_made_before_its_lot_expired_but_applied_after_spends_it_on_the_statement_too(
        client, runtime, admin_headers):
    """The ledger spends the lot (a booking is judged at its own time), but the statement judged the entry by when
    it was written: "2 credits expired unused", then "1 credit used … (its lot had expired: no change)"."""
    from tests.tasks.bookings.bookings_support import booking_created
    from tests.tasks.bookings.bookings_support import deliver as deliver_platform

    db, now = runtime.db, utcnow()
    with db.session_scope() as s:
        factories.student(s)
        lot = credits.issue_credits(session=s, student_id="stu_1", credit_type=CreditType.GROUP, quantity=2,
                                    cause="promo", expires_at=now - timedelta(hours=1))
        lot.created_at = now - timedelta(days=10)
    deliver_platform(db, booking_created("bk_1", "gc_plain", credit_type="group", when=now - timedelta(hours=2)))
    body = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers).get_json()
    lines = [(e["entry_type"], e["quantity"], e["balance"], e["counted"]) for e in body["entries"]]
    assert lines == [("grant", 2, 2, True), ("consume", -1, 1, True), ("expire", -1, 0, True)]
    assert body["entries"][1]["at"] == (now - timedelta(hours=2)).isoformat()  # when the credit was spent
    assert "1 group credit of lot" in body["entries"][2]["description"]
    assert client.get("/v1/students/stu_1/credits", headers=admin_headers).get_json()["balances"]["group"] == 0


def test_a_credit_spent_again_after_its_lot_expired_closes_the_statement_at_the_balance(client, runtime,
                                                                                         admin_headers):
    """Booked before the lot expired; the class cancelled after the expiry (the credit back to the expired lot);
    the student's own cancel outside policy, made before the expiry, delivered last: the credit is spent again.
    Before: the statement dated the spend-again at the booking too, counting one credit twice: it closed at -1
    while the balance is 0."""
    from sqlalchemy import select

    from db.models import CreditLedgerEntry
    from tests.tasks.bookings.bookings_support import booking_cancelled, booking_created, class_upserted
    from tests.tasks.bookings.bookings_support import deliver as deliver_platform

    db, now = runtime.db, utcnow()
    with db.session_scope() as s:
        factories.student(s)
        lot = credits.issue_credits(session=s, student_id="stu_1", credit_type=CreditType.GROUP, quantity=1,
                                    cause="promo", expires_at=now + timedelta(days=1))
        lot.created_at = now - timedelta(days=30)
        lot_id = lot.id
    deliver_platform(db, class_upserted("gc_c", starts_at=now + timedelta(days=2), when=now - timedelta(days=25)))
    deliver_platform(db, booking_created("bk_1", "gc_c", credit_type="group", when=now - timedelta(days=20)))
    with db.session_scope() as s:
        s.get(CreditLedgerEntry, lot_id).expires_at = now - timedelta(hours=2)
        s.scalar(select(CreditLedgerEntry).where(CreditLedgerEntry.booking_id == "bk_1")).created_at = \
            now - timedelta(days=20)
    deliver_platform(db, class_upserted("gc_c", starts_at=now + timedelta(days=2), status="cancelled",
                                        when=now - timedelta(hours=1)))
    deliver_platform(db, booking_cancelled("bk_1", within_policy=False, when=now - timedelta(hours=3)))
    body = client.get("/v1/students/stu_1/credits/statement", headers=admin_headers).get_json()
    lines = [(e["entry_type"], e["quantity"], e["balance"], e["counted"]) for e in body["entries"]]
    assert client.get("/v1/students/stu_1/credits", headers=admin_headers).get_json()["balances"]["group"] == 0
    assert body["balances"]["group"] == 0 and min(balance for _, _, balance, _ in lines) >= 0, lines
    assert [(kind, counted) for kind, _, _, counted in lines] == \
        [("grant", True), ("consume", True), ("release", False), ("consume", False)], lines
