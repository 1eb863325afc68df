"""Authoring courses and packages: validation names the first bad field and writes nothing; saving is
create-or-replace keyed by label/class id, a repeat is a no-op; edits after sales keep what enrollments use."""
from __future__ import annotations

import copy

import pytest
from sqlalchemy import func, select

from db.enums import BookingStatus, BundleKind, CreditType, ProgramStatus
from db.models import (
    Booking,
    CourseBundleComponent,
    CourseProgram,
    CourseStep,
    CourseStepOption,
    CreditPackage,
)
from tasks.catalog import services as catalog
from tasks.errors import ValidationFailed
from tests import factories

SFZ = {
    "title": "Sforzando: accents in ensemble playing",
    "description": "Three sessions.",
    "marketing_copy": "Play louder, precisely.",
    "timezone": "Europe/Berlin",
    "price": {"amount": 12000, "currency": "EUR"},
    "steps": [
        {"label": "SFZ-1", "title": "Attack", "summary": "Where accents start", "options": ["gc_a1", "gc_a2"]},
        {"label": "SFZ-2", "title": "Release", "options": ["gc_b1"]},
        {"label": "SFZ-3", "title": "Together", "options": []},
    ],
    "bundle": [{"kind": "private_credit", "quantity": 2}, {"kind": "group_credit", "quantity": 1}],
}


def course(**changes) -> dict:
    data = copy.deepcopy(SFZ)
    data.update(changes)
    return data


def save(db, data, code="SFZ") -> catalog.Saved:
    with db.session_scope() as s:
        return catalog.save_course(session=s, course=catalog.parse_course(data, code=code))


def snapshot(db) -> list:
    """Every catalog row with its updated_at: equal snapshots mean nothing was written."""
    with db.session_scope() as s:
        rows = []
        for model in (CourseProgram, CourseStep, CourseStepOption, CourseBundleComponent, CreditPackage):
            rows += [(model.__tablename__, r.id, r.updated_at, getattr(r, "deleted_at", None))
                     for r in s.scalars(select(model).order_by(model.id))]
        return rows


def view(db, code="SFZ") -> dict:
    with db.session_scope() as s:
        return catalog.course_view(s, catalog.get_program(s, code))


@pytest.mark.parametrize("mutate, field", [
    (lambda c: c.pop("title"), "title"),
    (lambda c: c.update(steps=[]), "steps"),
    (lambda c: c["steps"][1].update(label="SFZ-1"), "steps[1].label"),
    (lambda c: c["bundle"][0].update(quantity=0), "bundle[0].quantity"),
    (lambda c: c["bundle"][1].update(kind="private_credit"), "bundle[1].kind"),
    (lambda c: c["bundle"][0].update(kind="gold_credit"), "bundle[0].kind"),
    (lambda c: c["price"].update(currency="EURO"), "price.currency"),
    (lambda c: c["price"].update(currency="XYZ"), "price.currency"),
    (lambda c: c["price"].update(amount=-1), "price.amount"),
    (lambda c: c["price"].update(amount="12000"), "price.amount"),
    (lambda c: c.update(timezone="Mars/Olympus"), "timezone"),
    (lambda c: c["steps"][2]["options"].append("gc_a1"), "steps[2].options[0]"),
    (lambda c: c["steps"][0].update(position=2), "steps[0].position"),
    (lambda c: c["steps"][0].update(lable="typo"), "steps[0].lable"),
    (lambda c: c.update(code="OTHER"), "code"),
])
def test_invalid_course_names_the_field(mutate, field):
    data = course()
    mutate(data)
    with pytest.raises(ValidationFailed) as err:
        catalog.parse_course(data, code="SFZ")
    assert err.value.field == field
    assert str(err.value).startswith(field)


def test_valid_course_normalises_currency_and_accepts_one_bundle_object():
    parsed = catalog.parse_course(course(bundle={"kind": "group_credit", "quantity": 3}), code="SFZ")
    assert parsed.price.currency == "eur"
    assert [(b.kind, b.quantity) for b in parsed.bundle] == [(BundleKind.GROUP_CREDIT, 3)]
    assert catalog.bundle_summary(catalog.parse_course(course(), code="SFZ").bundle) == \
        "private_credit:2,group_credit:1"


def test_create_then_same_again_is_a_no_op(database):
    assert save(database, course()).change == "created"
    before = snapshot(database)
    assert save(database, course()).change == "unchanged"
    assert snapshot(database) == before
    v = view(database)
    assert v["status"] == "draft" and v["price"] == {"amount": 12000, "currency": "eur"}
    assert [(s["label"], s["position"], s["options"]) for s in v["steps"]] == [
        ("SFZ-1", 1, ["gc_a1", "gc_a2"]), ("SFZ-2", 2, ["gc_b1"]), ("SFZ-3", 3, [])]
    assert {(b["kind"], b["quantity"]) for b in v["bundle"]} == {("private_credit", 2), ("group_credit", 1)}


def test_replace_keeps_step_ids_by_label_reorders_and_moves_a_class(database):
    save(database, course())
    ids = {s["label"]: s["id"] for s in view(database)["steps"]}
    data = course()
    data["steps"] = [data["steps"][1], data["steps"][0], data["steps"][2]]  # swap 1 and 2
    data["steps"][0]["options"] = ["gc_b1", "gc_a2"]  # gc_a2 moves from SFZ-1 to SFZ-2
    data["steps"][1]["options"] = ["gc_a1"]
    data["bundle"] = [{"kind": "private_credit", "quantity": 3}]
    assert save(database, data).change == "updated"
    v = view(database)
    assert [(s["label"], s["id"], s["position"]) for s in v["steps"]] == [
        ("SFZ-2", ids["SFZ-2"], 1), ("SFZ-1", ids["SFZ-1"], 2), ("SFZ-3", ids["SFZ-3"], 3)]
    assert v["steps"][0]["options"] == ["gc_b1", "gc_a2"] and v["steps"][1]["options"] == ["gc_a1"]
    assert v["bundle"] == [{"kind": "private_credit", "quantity": 3}]


def test_removing_a_step_that_enrollments_have_is_refused_and_nothing_changes(database):
    with database.session_scope() as s:
        program = factories.program(s, code="SFZ", steps=3)
        factories.enrollment(s, factories.student(s), program)
    with database.session_scope() as s:
        data = catalog.course_view(s, catalog.get_program(s, "SFZ"))
    edited = course(steps=[{"label": st["label"], "title": st["title"], "options": st["options"]}
                           for st in data["steps"][:2]])
    before = snapshot(database)
    with pytest.raises(catalog.StepInUse, match="SFZ-3.*1 enrollment"):
        save(database, edited)
    assert snapshot(database) == before


def test_removing_an_unused_step_and_an_option_with_an_active_booking(database):
    save(database, course())
    data = course()
    data["steps"].pop()  # SFZ-3: nobody has it
    assert save(database, data).change == "updated"
    assert [s["label"] for s in view(database)["steps"]] == ["SFZ-1", "SFZ-2"]
    with database.session_scope() as s:
        step = s.scalar(select(CourseStep).where(CourseStep.label == "SFZ-1", CourseStep.deleted_at.is_(None)))
        s.add(Booking(id="bk_1", student_id=factories.student(s).id, class_id="gc_a2", course_step_id=step.id,
                      status=BookingStatus.ACTIVE))
    data["steps"][0]["options"] = ["gc_a1"]
    with pytest.raises(catalog.StepInUse, match="gc_a2"):
        save(database, data)
    # the same label may come back later as a new step
    data = course()
    assert save(database, data).change == "updated"
    assert [s["label"] for s in view(database)["steps"]] == ["SFZ-1", "SFZ-2", "SFZ-3"]


def test_published_course_gains_options_and_copy_and_stays_published(database):
    save(database, course())
    with database.session_scope() as s:
        catalog.get_program(s, "SFZ").status = ProgramStatus.PUBLISHED
        factories.enrollment(s, factories.student(s), catalog.get_program(s, "SFZ"))
    data = course(marketing_copy="Now with dates in June.")
    data["steps"][2]["options"] = ["gc_c1", "gc_c2"]
    assert save(database, data).change == "updated"
    v = view(database)
    assert v["status"] == "published" and v["marketing_copy"] == "Now with dates in June."
    assert v["steps"][2]["options"] == ["gc_c1", "gc_c2"]


def test_delete_is_soft_and_the_code_can_be_reused(database):
    save(database, course())
    with database.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    with database.session_scope() as s:
        assert catalog.live_program(s, "SFZ") is None
        assert s.scalar(select(func.count()).select_from(CourseProgram)) == 1
    assert save(database, course()).change == "created"


def test_packages_validate_save_and_repeat_as_no_op(database):
    with pytest.raises(ValidationFailed) as err:
        catalog.parse_package({"title": "Ten", "price": {"amount": 100, "currency": "usd"},
                               "credits": {"kind": "group", "quantity": -1}}, code="TEN")
    assert err.value.field == "credits.quantity"
    data = {"title": "Ten group classes", "price": {"amount": 9000, "currency": "usd"},
            "credits": {"kind": "group_credit", "quantity": 10}, "validity_days": 180}
    with database.session_scope() as s:
        assert catalog.save_package(session=s, package=catalog.parse_package(data, code="TEN")).change == "created"
    before = snapshot(database)
    with database.session_scope() as s:
        assert catalog.save_package(session=s, package=catalog.parse_package(data, code="TEN")).change == "unchanged"
        package = catalog.get_package(s, "TEN")
        assert (package.credit_type, package.quantity, package.price_currency) == (CreditType.GROUP, 10, "usd")
    assert snapshot(database) == before


def test_catalog_file_forms_and_first_bad_field_path():
    assert len(catalog.parse_catalog(course(code="SFZ")).courses) == 1
    assert len(catalog.parse_catalog([course(code="A"), course(code="B")]).courses) == 2
    both = catalog.parse_catalog({"courses": [course(code="A")], "packages": [
        {"code": "TEN", "title": "Ten", "price": {"amount": 1, "currency": "usd"},
         "credits": {"kind": "private", "quantity": 10}}]})
    assert (len(both.courses), len(both.packages)) == (1, 1)
    bad = [course(code="A"), course(code="B")]
    bad[1]["steps"][0]["options"] = [""]
    with pytest.raises(ValidationFailed) as err:
        catalog.parse_catalog(bad)
    assert err.value.field == "[1].steps[0].options[0]"
    with pytest.raises(ValidationFailed) as err:
        catalog.parse_catalog({"courses": [course(code="A"), course(code="A")]})
    assert err.value.field == "courses[1].code"
    with pytest.raises(ValidationFailed) as err:  # a bare list too: the second would replace the first
        catalog.parse_catalog([course(code="A"), course(code="B"), course(code="A")])
    assert err.value.field == "[2].code" and "duplicate code 'A'" in str(err.value)
    with pytest.raises(ValidationFailed) as err:
        catalog.parse_catalog([course()])
    assert err.value.field == "[0].code"
