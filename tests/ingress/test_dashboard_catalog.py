"""The catalog pages over the Flask test client: the owner builds a course edit by edit (each one audited),
a published course answers the what-if first and saves only on confirm against the state it showed; bad
edits change nothing; viewers and operators read every page and every form answers them 403."""
from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from db.enums import BookingStatus, ProgramStatus
from db.models import Booking, CourseProgram, CourseStep
from tasks.admins import audit
from tests import factories
from tests.admin_support import csrf_of, login_as, make_admin
from tests.tasks.catalog.test_catalog import snapshot

OWNER = "owner@studio.test"


def _text(response) -> str:
    return html.unescape(re.sub(r"\s+", " ", response.get_data(True)))


def _steps(db, code="SFZ") -> list[str]:
    with db.session_scope() as s:
        program = s.scalar(select(CourseProgram).where(CourseProgram.code == code))
        return [st.label for st in s.scalars(select(CourseStep).where(
            CourseStep.program_id == program.id, CourseStep.deleted_at.is_(None)).order_by(CourseStep.position))]


def _edit(client, csrf, code="SFZ", **fields):
    return client.post(f"/admin/ui/catalog/courses/{code}/edit", data={"csrf_token": csrf, **fields},
                       follow_redirects=True)


def test_owner_builds_a_draft_edit_by_edit_and_each_is_audited(client, runtime):
    db = runtime.db
    with db.session_scope() as s:
        factories.group_class(s, id="gc_tue", title="Tuesday group", capacity=8, seats_taken=3)
    make_admin(db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    created = client.post("/admin/ui/catalog/courses", follow_redirects=True, data={
        "csrf_token": csrf, "code": "SFZ", "title": "Sforzando", "price": "120.00", "currency": "eur",
        "first_step": "SFZ-1"})
    assert "Course SFZ created as a draft" in _text(created)
    assert "Saved: add step SFZ-2" in _text(_edit(client, csrf, edit="add_step", label="SFZ-2", title="Release"))
    page = _text(_edit(client, csrf, edit="attach", label="SFZ-1", class_id="gc_tue"))
    assert "Saved: attach class gc_tue to step SFZ-1" in page and "5 seats left" in page
    _edit(client, csrf, edit="move", label="SFZ-2", direction="up")
    assert _steps(db) == ["SFZ-2", "SFZ-1"]
    _edit(client, csrf, edit="bundle", private_credit="2", group_credit="0")
    _edit(client, csrf, edit="details", title="Sforzando!", price="99.50", currency="eur", timezone="Europe/Berlin")
    with db.session_scope() as s:
        program = s.scalar(select(CourseProgram).where(CourseProgram.code == "SFZ"))
        assert (program.title, program.price_amount, program.timezone) == ("Sforzando!", 9950, "Europe/Berlin")
        actions = [(e.actor, e.action, e.details.get("edit")) for e in audit.entries(session=s)]
    assert actions[0] == (OWNER, "course.save", "change the title, price or time zone")
    assert (OWNER, "course.save", "move step SFZ-2 up") in actions and len(actions) == 6



def test_the_what_if_lists_the_first_enrollments_and_counts_them_all(client, runtime, monkeypatch):
    from tasks.catalog import changes

    monkeypatch.setattr(changes, "MAX_LISTED", 2)
    with runtime.db.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2)
        for name in ("ann", "ben", "cay"):
            factories.enrollment(s, factories.student(s, id=f"stu_{name}", email=f"{name}@example.test"), program,
                                 session_id=f"cs_{name}")
    make_admin(runtime.db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    text = _text(client.post("/admin/ui/catalog/courses/SFZ/edit", data={
        "csrf_token": csrf, "edit": "move", "label": "SFZ-2", "direction": "up"}))
    assert "The first 2 of 3, by enrollment id." in text
    assert "stu_ann" in text and "stu_ben" in text and "stu_cay" not in text


@pytest.mark.parametrize("fields, message", [
    ({"edit": "move", "label": "SFZ-1", "direction": "up"}, "already first"),
    ({"edit": "move", "label": "NOPE", "direction": "down"}, "no step 'NOPE'"),
    ({"edit": "detach", "label": "SFZ-1", "class_id": "gc_none"}, "not an option"),
    ({"edit": "details", "title": "X", "price": "12,345.6"}, "price: give an amount"),
    ({"edit": "explode"}, "edit: one of"),
    ({"edit": "add_step", "label": "SFZ-2"}, "already has a step"),
])
def test_a_bad_edit_is_a_flash_and_changes_nothing(client, runtime, fields, message):
    with runtime.db.session_scope() as s:
        factories.program(s, code="SFZ", steps=2, status=ProgramStatus.DRAFT)
    make_admin(runtime.db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    before = snapshot(runtime.db)
    page = _text(_edit(client, csrf, **fields))
    assert "Not saved:" in page and message in page
    assert snapshot(runtime.db) == before


def test_a_published_course_answers_the_what_if_then_saves_only_on_confirm(client, runtime):
    db = runtime.db
    with db.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2)
        factories.enrollment(s, factories.student(s, id="stu_ann", email="ann@example.test"), program)
    make_admin(db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    before = snapshot(db)
    whatif = client.post("/admin/ui/catalog/courses/SFZ/edit", data={
        "csrf_token": csrf, "edit": "move", "label": "SFZ-2", "direction": "up"})
    text = _text(whatif)
    assert whatif.status_code == 200 and "Nothing has changed yet" in text
    assert "stu_ann" in text and "step SFZ-2: position 2 → 1 (unbooked; kept)" in text
    assert snapshot(db) == before
    base = re.search(r'name="base" value="([^"]+)"', text).group(1)

    # someone else changes the course meanwhile: the old confirm is refused
    _edit(client, csrf, edit="bundle", confirm="yes", base=base, private_credit="3", group_credit="0",
          reason="more private lessons")
    stale = _text(_edit(client, csrf, edit="move", label="SFZ-2", direction="up", confirm="yes", base=base))
    assert "the course changed since the what-if" in stale and _steps(db) == ["SFZ-1", "SFZ-2"]

    fresh = re.search(r'name="base" value="([^"]+)"', _text(client.post(
        "/admin/ui/catalog/courses/SFZ/edit", data={"csrf_token": csrf, "edit": "move", "label": "SFZ-2",
                                                     "direction": "up"}))).group(1)
    done = _text(_edit(client, csrf, edit="move", label="SFZ-2", direction="up", confirm="yes", base=fresh,
                       reason="Tuesday first"))
    assert "Saved: move step SFZ-2 up (1 enrollment(s) affected)" in done and _steps(db) == ["SFZ-2", "SFZ-1"]
    with db.session_scope() as s:
        entry = audit.entries(session=s)[0]
        assert (entry.reason, entry.details["enrollments_affected"]) == ("Tuesday first", 1)


def test_a_refused_change_shows_why_and_offers_no_confirm(client, runtime):
    db = runtime.db
    with db.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=2)
        enrollment = factories.enrollment(s, factories.student(s), program)
        s.add(Booking(id="bk_1", student_id="stu_1", class_id="gc_SFZ_1_0", course_step_id=program.steps[0].id,
                      enrollment_id=enrollment.id, status=BookingStatus.ACTIVE))
    make_admin(db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    text = _text(client.post("/admin/ui/catalog/courses/SFZ/edit", data={
        "csrf_token": csrf, "edit": "detach", "label": "SFZ-1", "class_id": "gc_SFZ_1_0"}))
    assert "refused" in text and "1 active booking(s) use it" in text and 'id="confirm"' not in text


FORMS = [
    ("/admin/ui/catalog/courses", {"code": "NEW", "title": "T", "price": "1.00", "first_step": "N-1"}),
    ("/admin/ui/catalog/courses/SFZ/edit", {"edit": "add_step", "label": "SFZ-9"}),
    ("/admin/ui/catalog/courses/SFZ/publish", {}),
    ("/admin/ui/catalog/packages", {"code": "TEN", "title": "Ten", "kind": "group", "quantity": "10",
                                    "price": "100.00"}),
    ("/admin/ui/catalog/packages/FIVE", {"title": "Five", "kind": "group", "quantity": "5", "price": "50.00"}),
    ("/admin/ui/catalog/packages/FIVE/publish", {}),
]
PAGES = ["/admin/ui/catalog", "/admin/ui/catalog/courses/SFZ", "/admin/ui/catalog/packages/FIVE"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_viewers_and_operators_read_every_page_and_every_form_is_403(client, runtime, role):
    db = runtime.db
    with db.session_scope() as s:
        factories.program(s, code="SFZ", steps=2)
        from db.enums import CreditType
        from db.models import CreditPackage
        s.add(CreditPackage(code="FIVE", title="Five", credit_type=CreditType.GROUP, quantity=5, price_amount=5000))
    make_admin(db, f"{role}@studio.test", role)
    csrf = login_as(client, f"{role}@studio.test")
    for path in PAGES:
        page = client.get(path)
        assert page.status_code == 200, path
        assert "Read only" in _text(page) and 'method="post" action="/admin/ui/catalog' not in page.get_data(True)
    before = snapshot(db)
    for path, fields in FORMS:
        response = client.post(path, data={"csrf_token": csrf, **fields})
        assert response.status_code == 403, path
        assert response.json["error"]["code"] == "forbidden"
    assert snapshot(db) == before
    with db.session_scope() as s:
        assert audit.entries(session=s) == []


def test_forms_without_csrf_and_pages_without_login(client, runtime):
    with runtime.db.session_scope() as s:
        factories.program(s, code="SFZ", steps=1)
    assert client.get("/admin/ui/catalog/courses/SFZ").status_code == 302  # to the login form
    make_admin(runtime.db, OWNER, "owner")
    login_as(client, OWNER)
    assert client.post("/admin/ui/catalog/courses/SFZ/edit", data={"edit": "add_step", "label": "X"}).status_code == 403
    assert client.get("/admin/ui/catalog/courses/NOPE").status_code == 404
    assert csrf_of(client.get("/admin/ui/catalog").get_data(True))


def test_the_list_and_the_builder_show_stripe_ids_and_open_drift(client, runtime):
    from db.models import StripeDrift

    with runtime.db.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=1)
        program.stripe_product_id, program.stripe_price_id = "prod_sfz", "price_sfz"
        s.add(StripeDrift(stripe_object_id="prod_sfz", field="name", expected="SFZ course", actual="Renamed in Stripe"))
    make_admin(runtime.db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")
    listing = _text(client.get("/admin/ui/catalog"))
    assert "prod_sfz" in listing and "price_sfz" in listing and "drift: 1" in listing
    assert "Renamed in Stripe" in listing  # the open drift section
    page = _text(client.get("/admin/ui/catalog/courses/SFZ"))
    assert "we have “SFZ course”, Stripe has “Renamed in Stripe”" in page and "published" in page


@pytest.mark.parametrize("path, fields, what", [
    ("/admin/ui/catalog/courses", {"title": "T", "price": "1.00", "first_step": "RACE-1"}, "course"),
    ("/admin/ui/catalog/packages", {"title": "T", "quantity": "10", "kind": "group", "price": "1.00"}, "package"),
])
def test_creating_a_code_another_owner_created_meanwhile_is_a_flash_not_a_500(client, runtime, monkeypatch, path,
                                                                              fields, what):
    """The race: both requests pass the "exists already" check before either commits (here: the check and the
    save's own look-up see no live row), and the unique index refuses the second insert at commit."""
    make_admin(runtime.db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    first = client.post(path, follow_redirects=True, data={"csrf_token": csrf, "code": "RACE", **fields})
    assert "RACE" in _text(first) and "Not created" not in _text(first) and "Not saved" not in _text(first)
    from tasks.catalog import services

    monkeypatch.setattr(services, "live_program", lambda *a, **k: None)
    monkeypatch.setattr(services, "live_package", lambda *a, **k: None)
    second = client.post(path, follow_redirects=True, data={"csrf_token": csrf, "code": "RACE", **fields})
    assert second.status_code == 200
    assert f"{what} 'RACE' exists already" in _text(second)


def test_prices_are_shown_in_the_currency_s_own_units(client, runtime):
    """A yen price of 1200 is 1200 JPY (yen has no minor unit), not 12.00 JPY; a euro price in cents is
    shown in euros with a thousands separator, as the e-mails write it."""
    make_admin(runtime.db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    for code, price, currency in (("YEN", "1200", "jpy"), ("EUR", "1234.50", "eur")):
        client.post("/admin/ui/catalog/courses", follow_redirects=True, data={
            "csrf_token": csrf, "code": code, "title": code, "price": price, "currency": currency,
            "first_step": f"{code}-1"})
    with runtime.db.session_scope() as s:
        prices = dict(s.execute(select(CourseProgram.code, CourseProgram.price_amount)).all())
    assert prices == {"YEN": 1200, "EUR": 123450}
    listing = _text(client.get("/admin/ui/catalog"))
    assert "1200 JPY" in listing and "1,234.50 EUR" in listing and "12.00 JPY" not in listing
    make_admin(runtime.db, "viewer@studio.test", "viewer")
    login_as(client, "viewer@studio.test")  # the owner sees an edit form; a viewer sees the price as words
    assert "<th>Price</th><td>1200 JPY</td>" in _text(client.get("/admin/ui/catalog/courses/YEN"))


def test_a_three_decimal_price_is_read_and_shown_in_thousandths(client, runtime):
    """12.5 KWD is 12500 fils as Stripe counts them, shown back as 12.500 in the builder and as 12.500 KWD in the
    catalog; a price Stripe would not charge (a last decimal not 0) is refused with the reason."""
    make_admin(runtime.db, OWNER, "owner")
    csrf = login_as(client, OWNER)
    new = {"csrf_token": csrf, "code": "KWD", "title": "Dinar", "currency": "kwd", "first_step": "KWD-1"}
    refused = client.post("/admin/ui/catalog/courses", follow_redirects=True, data={**new, "price": "12.505"})
    assert "Stripe charges KWD in steps of 0.010" in _text(refused)
    client.post("/admin/ui/catalog/courses", follow_redirects=True, data={**new, "price": "12.5"})
    with runtime.db.session_scope() as s:
        assert s.scalar(select(CourseProgram.price_amount).where(CourseProgram.code == "KWD")) == 12500
    assert "12.500 KWD" in _text(client.get("/admin/ui/catalog"))
    assert 'name="price" value="12.500"' in _text(client.get("/admin/ui/catalog/courses/KWD"))
