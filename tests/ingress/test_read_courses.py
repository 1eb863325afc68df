"""GET /v1/courses and /v1/courses/<code>: published courses only, steps in order,
options with the mirrored class's start and seats left."""
from __future__ import annotations

from datetime import timedelta

from db.enums import ClassStatus, ProgramStatus
from tasks.catalog import services as catalog
from tests import factories
from tests.tasks.catalog.test_catalog import course


def _setup(db, status=ProgramStatus.PUBLISHED):
    with db.session_scope() as s:
        catalog.save_course(session=s, course=catalog.parse_course(course(), code="SFZ"))
        catalog.get_program(s, "SFZ").status = status
        factories.group_class(s, id="gc_a1", starts_in=timedelta(days=5), capacity=8, seats_taken=3)
        factories.group_class(s, id="gc_a2", starts_in=timedelta(days=2), capacity=8, seats_taken=8)
        factories.group_class(s, id="gc_b1", starts_in=timedelta(days=9), capacity=6, seats_taken=1,
                              status=ClassStatus.CANCELLED)


def test_course_detail_in_contract_shape_with_seats_left(client, admin_headers, runtime):
    _setup(runtime.db)
    response = client.get("/v1/courses/SFZ", headers=admin_headers)
    assert response.status_code == 200
    body = response.json
    assert (body["code"], body["title"], body["published"]) == ("SFZ", "Sforzando: accents in ensemble playing", True)
    steps = body["steps"]
    assert [(s["label"], s["position"], s["title"]) for s in steps] == [
        ("SFZ-1", 1, "Attack"), ("SFZ-2", 2, "Release"), ("SFZ-3", 3, "Together")]
    assert all(isinstance(s["id"], int) for s in steps)
    # options ordered by start; seats_left from the class mirror
    assert [(o["class_id"], o["seats_left"]) for o in steps[0]["options"]] == [("gc_a2", 0), ("gc_a1", 5)]
    assert steps[0]["options"][0]["starts_at"].endswith("+00:00")
    assert steps[1]["options"] == [{**steps[1]["options"][0], "class_id": "gc_b1", "seats_left": 0,
                                    "status": "cancelled"}]  # cancelled: nothing to book
    assert steps[2]["options"] == []


def test_option_whose_class_is_not_mirrored_yet_has_null_start(client, admin_headers, runtime):
    with runtime.db.session_scope() as s:
        catalog.save_course(session=s, course=catalog.parse_course(course(), code="SFZ"))
        catalog.get_program(s, "SFZ").status = ProgramStatus.PUBLISHED
    option = client.get("/v1/courses/SFZ", headers=admin_headers).json["steps"][1]["options"][0]
    assert option == {"class_id": "gc_b1", "starts_at": None, "ends_at": None, "seats_left": None, "status": None}


def test_list_shows_published_courses_only(client, admin_headers, runtime):
    _setup(runtime.db)
    with runtime.db.session_scope() as s:
        catalog.save_course(session=s, course=catalog.parse_course(course(title="Draft"), code="DRAFT"))
    body = client.get("/v1/courses", headers=admin_headers).json
    assert [c["code"] for c in body["courses"]] == ["SFZ"]
    summary = body["courses"][0]
    assert summary["published"] is True
    assert summary["price"] == {"amount": 12000, "currency": "eur", "stripe_price_id": None}  # not published to Stripe
    assert [s["label"] for s in summary["steps"]] == ["SFZ-1", "SFZ-2", "SFZ-3"]
    assert client.get("/v1/courses/DRAFT", headers=admin_headers).status_code == 404


def test_deleted_course_disappears_and_auth_is_required(client, admin_headers, runtime):
    _setup(runtime.db)
    assert client.get("/v1/courses").status_code == 401
    with runtime.db.session_scope() as s:
        catalog.delete_course(session=s, code="SFZ")
    assert client.get("/v1/courses", headers=admin_headers).json == {"courses": []}
    assert client.get("/v1/courses/SFZ", headers=admin_headers).status_code == 404
