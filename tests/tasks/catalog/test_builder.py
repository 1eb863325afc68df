"""The builder's edits and money parsing: each edit changes one thing of the course as it stands; an
impossible one (first step up, unknown step or class, a class already in the course) is a ValidationFailed."""
from __future__ import annotations

import pytest

from tasks.catalog import builder
from tasks.catalog import services as catalog
from tasks.errors import ValidationFailed

BODY = {"title": "Sforzando", "description": None, "marketing_copy": None, "timezone": "UTC",
        "price": {"amount": 12000, "currency": "eur"}, "bundle": [],
        "steps": [{"label": "A", "title": None, "summary": None, "options": ["gc_1"]},
                  {"label": "B", "title": None, "summary": None, "options": []}]}


@pytest.mark.parametrize("raw, currency, minor", [("120", "eur", 12000), ("120.5", "eur", 12050),
                                                   ("0,99", "usd", 99), ("1200", "jpy", 1200),
                                                   ("1200.00", "jpy", 1200), ("12.500", "kwd", 12500),
                                                   ("12.5", "KWD", 12500), ("12,25", "bhd", 12250),
                                                   ("7", "tnd", 7000)])
def test_minor_units(raw, currency, minor):
    assert builder.minor_units(raw, currency) == minor
    assert builder.minor_units(builder.major_units(minor, currency), currency) == minor


def test_a_three_decimal_price_is_shown_with_its_three_decimals():
    assert builder.major_units(12500, "kwd") == "12.500" and builder.major_units(12000, "eur") == "120.00"


@pytest.mark.parametrize("raw, currency", [("", "eur"), ("-1", "eur"), ("1.234", "eur"), ("1e3", "eur"),
                                           ("12.50", "jpy"), (None, "eur"), ("1.2345", "kwd")])
def test_bad_money_names_the_field(raw, currency):
    with pytest.raises(ValidationFailed, match="price"):
        builder.minor_units(raw, currency)


def test_a_three_decimal_price_stripe_would_not_charge_is_refused_with_the_nearest_it_would():
    with pytest.raises(ValidationFailed, match=r"price: Stripe charges KWD in steps of 0\.010.*12\.500, not 12\.505"):
        builder.minor_units("12.505", "kwd")


def test_each_edit_changes_one_thing_and_leaves_the_original_alone():
    moved = builder.edited(BODY, "move", {"label": "B", "direction": "up"})
    assert [s["label"] for s in moved["steps"]] == ["B", "A"] and [s["label"] for s in BODY["steps"]] == ["A", "B"]
    attached = builder.edited(BODY, "attach", {"label": "B", "class_id": "gc_2"})
    assert attached["steps"][1]["options"] == ["gc_2"]
    assert builder.edited(attached, "detach", {"label": "B", "class_id": "gc_2"})["steps"][1]["options"] == []
    added = builder.edited(BODY, "add_step", {"label": "C", "title": "Coda"})
    assert added["steps"][-1] == {"label": "C", "title": "Coda", "summary": None, "options": []}
    assert [s["label"] for s in builder.edited(BODY, "remove_step", {"label": "A"})["steps"]] == ["B"]
    bundle = builder.edited(BODY, "bundle", {"private_credit": "2", "group_credit": "0"})
    assert bundle["bundle"] == [{"kind": "private_credit", "quantity": 2}]
    details = builder.edited(BODY, "details", {"title": "New", "price": "99.00", "currency": "USD"})
    assert (details["title"], details["price"]) == ("New", {"amount": 9900, "currency": "usd"})
    for body in (moved, attached, added, bundle, details):
        catalog.parse_course(body, code="SFZ")  # each result is a whole, valid course


@pytest.mark.parametrize("edit, form, field", [
    ("move", {"label": "A", "direction": "up"}, "direction"),
    ("move", {"label": "B", "direction": "down"}, "direction"),
    ("move", {"label": "A", "direction": "sideways"}, "direction"),
    ("move", {"label": "Z", "direction": "up"}, "label"),
    ("attach", {"label": "B", "class_id": "gc_1"}, "class_id"),
    ("attach", {"label": "B", "class_id": " "}, "class_id"),
    ("detach", {"label": "A", "class_id": "gc_9"}, "class_id"),
    ("add_step", {"label": "A"}, "label"),
    ("bundle", {"private_credit": "two"}, "private_credit"),
    ("bundle", {"private_credit": "²"}, "private_credit"),  # a digit to str.isdigit, refused by int()
    ("details", {"title": "", "price": "1"}, "title"),
    ("unknown", {}, "edit"),
])
def test_an_impossible_edit_names_its_field(edit, form, field):
    with pytest.raises(ValidationFailed) as raised:
        builder.edited(BODY, edit, form)
    assert raised.value.field == field


def test_the_last_step_cannot_be_removed_and_fingerprints_name_states():
    one = builder.edited(BODY, "remove_step", {"label": "B"})
    with pytest.raises(ValidationFailed, match="at least one step"):
        builder.edited(one, "remove_step", {"label": "A"})
    assert builder.fingerprint(BODY) == builder.fingerprint(dict(BODY)) != builder.fingerprint(one)


@pytest.mark.parametrize("form, field", [
    ({"kind": "group", "quantity": "²", "price": "10.00", "currency": "eur", "title": "T"}, "quantity"),
    ({"kind": "group", "quantity": "10", "validity_days": "³", "price": "10.00", "currency": "eur", "title": "T"},
     "validity_days"),
])
def test_a_package_form_with_other_digits_names_its_field(form, field):
    with pytest.raises(ValidationFailed) as raised:
        builder.package_body(form)
    assert raised.value.field == field
