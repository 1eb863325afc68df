"""The entity tag of a course or package (`tasks.catalog.versions`): equal states, equal tags; any change, a
publish's included, a new tag; and a write's If-Match / If-None-Match checked against it."""
from __future__ import annotations

import pytest

from db.enums import ProgramStatus
from tasks.catalog import services as catalog
from tasks.catalog import versions
from tasks.catalog.publishing import COURSE, PACKAGE
from tests.tasks.catalog.test_catalog import course, save

PACKAGE_BODY = {"title": "Ten", "price": {"amount": 9000, "currency": "usd"},
                "credits": {"kind": "group", "quantity": 10}}


def _tag(db, kind=COURSE, code="SFZ"):
    with db.session_scope() as s:
        return versions.current_tag(s, kind, code)


def _require(db, kind=COURSE, code="SFZ", **conditions):
    with db.session_scope() as s:
        versions.require(s, kind=kind, code=code, conditions=versions.Conditions(**conditions))


def test_the_tag_follows_the_state_and_only_the_state(database):
    assert _tag(database) is None
    save(database, course())
    tag = _tag(database)
    assert tag == _tag(database) and len(tag) == 32
    save(database, course())  # unchanged: the same tag
    assert _tag(database) == tag
    save(database, course(title="Another"))
    retitled = _tag(database)
    assert retitled != tag
    with database.session_scope() as s:  # what publishing sets
        program = catalog.get_program(s, "SFZ", lock=True)
        program.status, program.stripe_price_id = ProgramStatus.PUBLISHED, "price_1"
    assert _tag(database) not in (tag, retitled)
    with database.session_scope() as s:
        catalog.save_package(session=s, package=catalog.parse_package(PACKAGE_BODY, code="TEN"))
    package_tag = _tag(database, PACKAGE, "TEN")
    with database.session_scope() as s:
        catalog.get_package(s, "TEN", lock=True).stripe_price_id = "price_2"
    assert _tag(database, PACKAGE, "TEN") != package_tag


def test_require_holds_or_raises(database):
    _require(database, if_none_match=frozenset({versions.ANY}))  # nothing yet: creating is allowed
    with pytest.raises(versions.PreconditionFailed, match="does not exist"):
        _require(database, if_match=frozenset({versions.ANY}))
    save(database, course())
    tag = _tag(database)
    _require(database)  # no conditions
    _require(database, if_match=frozenset({versions.ANY}))
    _require(database, if_match=frozenset({"other", tag}))
    _require(database, if_none_match=frozenset({"other"}))
    with pytest.raises(versions.PreconditionFailed, match="has changed since"):
        _require(database, if_match=frozenset({"other"}))
    with pytest.raises(versions.PreconditionFailed, match="already exists"):
        _require(database, if_none_match=frozenset({versions.ANY}))
    with pytest.raises(versions.PreconditionFailed, match="If-None-Match names"):
        _require(database, if_none_match=frozenset({tag}))
