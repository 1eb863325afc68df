"""A write refused by a unique index because another request wrote the same key at the same moment answers
409 `conflict` on every route (documented on every write under /admin and /v1) and saves nothing; any
other refusal by the database is a defect: 500, logged."""
from __future__ import annotations

import sqlalchemy as sa

from db.models import Student, StudentCourseEnrollment
from db.types import utcnow
from ingress.app import create_app
from ingress.openapi import build_document
from tests.conftest import ADMIN_TOKEN


def _students(database, student_id: str) -> int:
    with database.engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(Student).where(Student.id == student_id))


def test_a_lost_race_on_a_unique_key_is_409_and_any_other_refusal_500(runtime):
    app = create_app(runtime.settings, runtime=runtime)
    row = {"id": "stu_race", "created_at": utcnow(), "updated_at": utcnow()}

    @app.post("/admin/_race")
    def race():  # the loser of two writers of one key: the other's row is already there
        with runtime.db.session_scope() as s:
            s.execute(sa.insert(Student.__table__).values(**{**row, "id": "stu_loser"}))
            s.execute(sa.insert(Student.__table__).values(**row))
            s.execute(sa.insert(Student.__table__).values(**row))
        return {}

    @app.post("/admin/_broken")
    def broken():  # a row pointing at nothing: no retry makes it right
        with runtime.db.session_scope() as s:
            s.execute(sa.insert(StudentCourseEnrollment.__table__).values(
                student_id="stu_nobody", program_id=999, status="active", amount_total=0, amount_refunded=0,
                fulfilment_metadata={}, created_at=utcnow(), updated_at=utcnow()))
        return {}

    client = app.test_client()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    lost = client.post("/admin/_race", headers=headers)
    assert lost.status_code == 409 and lost.get_json()["error"]["code"] == "conflict"
    assert _students(runtime.db, "stu_loser") == 0 and _students(runtime.db, "stu_race") == 0  # nothing saved
    refused = client.post("/admin/_broken", headers=headers)
    assert refused.status_code == 500 and refused.get_json()["error"]["code"] == "internal_error"


def test_every_write_under_admin_and_v1_documents_the_conflict(app):
    doc = build_document(app)
    writes = [(path, method, operation) for path, operations in doc["paths"].items()
              for method, operation in operations.items()
              if method != "get" and path.startswith(("/admin", "/v1"))]
    assert len(writes) > 20
    for path, method, operation in writes:
        assert "409" in operation["responses"], (method, path)
    assert all("409" not in operation["responses"] for operation in doc["paths"]["/webhooks/platform"].values())
