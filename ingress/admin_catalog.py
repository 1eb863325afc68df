"""Admin catalog API: courses and credit packages, publishing to Stripe.

PUT writes a whole course or package (create or replace; 201 when created, 200 otherwise);
a validation failure is 400 with the error object naming the field (`error.field`); a package linked to a Stripe
price another course or package holds (a deleted one too) is 409 `price_in_use`. What GET answers can be PUT back
unchanged: the fields publishing sets are taken and ignored (`READ_ONLY` of the `tasks.catalog` models). The
bodies' JSON Schemas are `CourseWrite` and `PackageWrite` in `ingress.openapi`.
`PUT /admin/courses/<code>?dry_run=true` answers the what-if of the edit (`tasks.catalog.changes`:
whose progress, bookings or bundle it touches, and what the real save would refuse) and changes nothing. Publishing
answers 202: the `publish_listing` actor makes the Stripe calls (outside any request and transaction).
GET of one course or package answers an `ETag` (`tasks.catalog.versions`); a PUT (its dry run too) honours
`If-Match` and `If-None-Match`, checked under the row's lock in the save's transaction (412 `precondition_failed`,
nothing changed), and answers the saved state's `ETag`. Without them a PUT is unconditional. A GET with
If-None-Match naming the current ETag answers 304 Not Modified; DELETE honours both conditions as PUT does, and
publishing checks them when it is asked for.
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from werkzeug.http import parse_etags

from ingress import roles
from ingress.bodies import json_object
from ingress.paging import page_args, read_page
from ingress.roles import require_role
from ingress.errors import ApiError, error_response
from tasks.catalog import services as catalog
from tasks.catalog import changes
from tasks.catalog import drift
from tasks.catalog import publishing
from tasks.catalog import versions
from tasks.enrollments import reminders
from tasks.errors import ValidationFailed
from tasks.stripe_api import key_mode
from workers import publishing as publish_calls
from workers.actors import send

bp = Blueprint("admin_catalog", __name__, url_prefix="/admin")


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


def stripe_mode() -> str | None:
    """Stripe's mode this installation serves (its key's): the catalog's Stripe state is told in it."""
    return key_mode(_runtime().settings.stripe_api_key)


def _body() -> tuple[dict, str | None]:
    """The written course or package, and the optional `reason` taken out of it (the audit log's, not the
    catalog's)."""
    data = json_object()  # strict: no NUL, lone surrogate or deep nesting reaches the catalog
    reason = roles.reason_of(data)
    data.pop("reason", None)
    return data, reason


@bp.errorhandler(catalog.StepInUse)
def _in_use(exc: catalog.StepInUse):
    return error_response(409, "step_in_use", str(exc), field=exc.field)


@bp.errorhandler(catalog.PriceInUse)
def _price_in_use(exc: catalog.PriceInUse):
    return error_response(409, "price_in_use", str(exc), field=exc.field)


@bp.errorhandler(versions.PreconditionFailed)
def _precondition_failed(exc: versions.PreconditionFailed):
    return error_response(412, "precondition_failed", str(exc))


def _conditions() -> versions.Conditions:
    """The request's If-Match and If-None-Match (RFC 9110): an absent header sets no condition; one that holds
    neither `*` nor an entity tag is a 400 naming it. If-Match compares strongly (a weak tag never matches),
    If-None-Match weakly."""
    found: dict[str, frozenset[str] | None] = {}
    for header in ("If-Match", "If-None-Match"):
        if header not in request.headers:
            found[header] = None
            continue
        tags = parse_etags(request.headers[header])
        if not tags:
            raise ValidationFailed(f'{header}: must be "*" or one or more entity tags, quoted as the ETag header '
                                   'answers them', field=header)
        found[header] = (frozenset({versions.ANY}) if tags.star_tag
                         else frozenset(tags.as_set(include_weak=header == "If-None-Match")))
    return versions.Conditions(if_match=found["If-Match"], if_none_match=found["If-None-Match"])


def _tagged(view: dict, body: dict | None = None, status: int = 200):
    """`body` (default: the view) answered with the view's ETag."""
    response = jsonify(view if body is None else body)
    response.status_code = status
    response.set_etag(versions.entity_tag(view))
    return response


def _conditional_read(view: dict):
    """A GET of one course or package under the request's conditions: If-None-Match naming its ETag (or `*`)
    answers 304 Not Modified, with the ETag and no body (the caller's copy is current); If-Match not naming it
    answers 412, as a write would."""
    conditions = _conditions()
    tag = versions.entity_tag(view)
    if conditions.if_match is not None and not versions.matches(tag, conditions.if_match):
        raise versions.PreconditionFailed("it has changed since the ETag that If-Match names was read: GET it "
                                          "without If-Match")
    if conditions.if_none_match is not None and versions.matches(tag, conditions.if_none_match):
        response = current_app.response_class(status=304)
        response.set_etag(tag)
        return response
    return _tagged(view)


# --------------------------------------------------------------------------- courses


@bp.get("/courses")
@require_role("viewer")
def list_courses():
    with _runtime().db.session_scope() as session:
        return jsonify({"courses": [versions.course_view(session, p, stripe_mode()) for p in catalog.live_programs(session)]})


def dry_run_flag() -> bool:
    raw = request.args.get("dry_run")
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise ValidationFailed("dry_run: must be true or false", field="dry_run")


@bp.put("/courses/<code>")
@require_role("owner")
def put_course(code: str):
    dry_run = dry_run_flag()
    conditions = _conditions()
    data, reason = _body()
    course = catalog.parse_course(data, code=code)
    if dry_run:
        # no lock: a dry run writes nothing, and the save that follows it checks its own If-Match again
        with _runtime().db.session_scope() as session:
            versions.require(session, kind=publishing.COURSE, code=code, conditions=conditions, lock=False, mode=stripe_mode())
            impact = changes.course_change(session=session, course=course)
            return jsonify({"dry_run": True, **impact.as_dict()})
    with _runtime().db.session_scope() as session:
        versions.require(session, kind=publishing.COURSE, code=code, conditions=conditions, mode=stripe_mode())
        impact = changes.course_change(session=session, course=course, detail=False)  # the summary is recorded
        summary = impact.summary() if impact.exists else None  # a new course affects nobody
        saved = catalog.save_course(session=session, course=course)
        roles.record_action(session, "course.save", f"course:{code}", reason, change=saved.change, **(summary or {}))
        view = versions.course_view(session, catalog.get_program(session, code), stripe_mode())
    return _tagged(view, {"change": saved.change, "course": view, "impact": summary},
                   201 if saved.change == "created" else 200)


@bp.get("/courses/<code>")
@require_role("viewer")
def get_course(code: str):
    with _runtime().db.session_scope() as session:
        view = versions.course_view(session, catalog.get_program(session, code), stripe_mode())
    return _conditional_read(view)


@bp.delete("/courses/<code>")
@require_role("owner")
def delete_course(code: str):
    conditions = _conditions()
    with _runtime().db.session_scope() as session:
        versions.require(session, kind=publishing.COURSE, code=code, conditions=conditions, mode=stripe_mode())
        program = catalog.delete_course(session=session, code=code)
        reminders.course_deleted(session=session, program_id=program.id)  # its steps can no longer be booked
        roles.record_action(session, "course.delete", f"course:{code}", roles.reason_of(json_object(optional=True)))
    return jsonify({"code": code, "deleted": True})


@bp.post("/courses/<code>/publish")
@require_role("owner")
def publish_course(code: str):
    return _publish(publishing.COURSE, code)


# --------------------------------------------------------------------------- packages


@bp.get("/packages")
@require_role("viewer")
def list_packages():
    with _runtime().db.session_scope() as session:
        return jsonify({"packages": [versions.package_view(session, p, stripe_mode()) for p in catalog.live_packages(session)]})


@bp.put("/packages/<code>")
@require_role("owner")
def put_package(code: str):
    conditions = _conditions()
    data, reason = _body()
    package = catalog.parse_package(data, code=code)
    with _runtime().db.session_scope() as session:
        versions.require(session, kind=publishing.PACKAGE, code=code, conditions=conditions, mode=stripe_mode())
        saved = catalog.save_package(session=session, package=package)
        roles.record_action(session, "package.save", f"package:{code}", reason, change=saved.change)
        view = versions.package_view(session, catalog.get_package(session, code), stripe_mode())
    return _tagged(view, {"change": saved.change, "package": view}, 201 if saved.change == "created" else 200)


@bp.get("/packages/<code>")
@require_role("viewer")
def get_package(code: str):
    with _runtime().db.session_scope() as session:
        view = versions.package_view(session, catalog.get_package(session, code), stripe_mode())
    return _conditional_read(view)


@bp.delete("/packages/<code>")
@require_role("owner")
def delete_package(code: str):
    conditions = _conditions()
    with _runtime().db.session_scope() as session:
        versions.require(session, kind=publishing.PACKAGE, code=code, conditions=conditions, mode=stripe_mode())
        catalog.delete_package(session=session, code=code)
        roles.record_action(session, "package.delete", f"package:{code}", roles.reason_of(json_object(optional=True)))
    return jsonify({"code": code, "deleted": True})


@bp.post("/packages/<code>/publish")
@require_role("owner")
def publish_package(code: str):
    return _publish(publishing.PACKAGE, code)


# --------------------------------------------------------------------------- publishing and drift


def _publish(kind: str, code: str):
    """Queue the publish; If-Match / If-None-Match are checked against the course or package as it stands when
    the publish is asked for (a save after that, before the worker runs, is published with it)."""
    conditions = _conditions()
    reason = roles.reason_of(json_object(optional=True))
    with _runtime().db.session_scope() as session:  # no conditions: nothing is read
        versions.require(session, kind=kind, code=code, conditions=conditions, lock=False, mode=stripe_mode())
    queue_publish(kind, code, reason)
    return jsonify({"kind": kind, "code": code, "publishing": True,
                    "status_url": f"/admin/{kind}s/{code}"}), 202


def queue_publish(kind: str, code: str, reason: str | None) -> None:
    """Queue the publish (the worker makes the Stripe calls) and record who asked; ApiError when refused."""
    runtime = _runtime()
    try:
        queued = publish_calls.request_publish(unit_of_work=runtime.db.session_scope, settings=runtime.settings,
                                               kind=kind, code=code, send=send)
    except publishing.PublishingDisabled as exc:
        raise ApiError(503, "publishing_disabled", str(exc)) from None
    except publishing.PublishFailed as exc:
        raise ApiError(409, "not_publishable", str(exc)) from None
    if not queued:
        raise ApiError(503, "queue_unavailable", "the publish could not be queued; try again")
    with runtime.db.session_scope() as session:
        roles.record_action(session, f"{kind}.publish", f"{kind}:{code}", reason)


@bp.get("/stripe/drift")
@require_role("viewer")
def list_drift():
    page = page_args(default=100)
    with _runtime().db.session_scope() as session:
        rows, next_before = read_page(page, lambda limit, before: drift.open_drift(session, limit, before))
        return jsonify({"drift": [publishing.drift_view(d) for d in rows], "next_before": next_before})
