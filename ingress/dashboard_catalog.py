"""The dashboard's catalog: courses and packages with their status, Stripe ids and drift (`/admin/ui/catalog`),
the course builder (details, steps in order, options from the mirrored classes, bundle, publish) and the
package form. Everyone with a session reads; only an owner's forms change anything (403 otherwise).

Each builder form is one edit (`tasks.catalog.builder`) of the course as it stands. On a published course
(or one with enrollments) the edit first answers its what-if (`tasks.catalog.changes`): who it touches,
what would be refused; only the confirm button, carrying the state it was asked about, saves it. Every
save and publish writes its audit entry; a refused edit is a flash message and changes nothing.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

from flask import current_app, flash, g, redirect, render_template, request, url_for
from sqlalchemy.exc import IntegrityError

from db.database import is_unique_violation
from db.enums import BundleKind, CreditType, ProgramStatus
from ingress import dashboard, roles
from ingress.admin_catalog import queue_publish, stripe_mode
from ingress.errors import ApiError
from ingress.roles import dashboard_role
from tasks.catalog import builder, changes, drift, publishing
from tasks.catalog import services as catalog
from tasks.errors import TaskError

bp = dashboard.page_blueprint("catalog_ui", __name__, "/admin/ui/catalog")


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


def _may_edit() -> bool:
    return g.principal.can("owner")


def _form() -> dict[str, str]:
    return {k: v for k, v in request.form.items() if k != dashboard.CSRF_FIELD}


# --------------------------------------------------------------------------- the list


@bp.get("")
@dashboard_role("viewer")
def catalog_page():
    with _runtime().db.session_scope() as s:
        courses = []
        for program in catalog.live_programs(s):
            stripe = publishing.stripe_state(s, publishing.COURSE, program, stripe_mode())
            courses.append({"code": program.code, "title": program.title, "status": program.status.value,
                            "price": (program.price_amount, program.price_currency),
                            "steps": len(catalog.live_steps(s, program.id)), "stripe": stripe})
        packages = []
        for package in catalog.live_packages(s):
            packages.append({**catalog.package_view(package), "status": builder.package_status(package),
                             "stripe": publishing.stripe_state(s, publishing.PACKAGE, package, stripe_mode())})
        open_drift = [publishing.drift_view(d) for d in drift.open_drift(s)]
    return render_template("dashboard/catalog.html", courses=courses, packages=packages, drift=open_drift,
                           may_edit=_may_edit(), credit_types=[t.value for t in CreditType])


@contextmanager
def _first_creator(what: str, code: str):
    """Two owners creating the same code at once both pass the "exists already" check; the second's insert is
    refused by the live-code unique index at commit, and answers as the check does, not a 500."""
    try:
        yield
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
        raise ApiError(409, "conflict", f"{what} {code!r} exists already; open it to edit") from None


# --------------------------------------------------------------------------- courses


@bp.post("/courses")
@dashboard_role("owner")
def create_course():
    code = (request.form.get("code") or "").strip()
    try:
        course = catalog.parse_course(builder.new_course(_form()), code=code)
        with _first_creator("course", code), _runtime().db.session_scope() as s:
            if catalog.live_program(s, code) is not None:
                raise ApiError(409, "conflict", f"course {code!r} exists already; open it to edit")
            catalog.save_course(session=s, course=course)
            roles.record_action(s, "course.save", f"course:{code}", roles.reason_of(request.form),
                                change="created", edit="create")
    except (TaskError, ApiError) as exc:
        flash(f"Not created: {dashboard.refusal(exc)}", "error")
        return redirect(url_for("catalog_ui.catalog_page"))
    flash(f"Course {code} created as a draft. Add its steps, options and bundle, then publish.", "ok")
    return redirect(url_for("catalog_ui.course_page", code=code))


@bp.get("/courses/<code>")
@dashboard_role("viewer")
def course_page(code: str):
    with _runtime().db.session_scope() as s:
        program = catalog.get_program(s, code)
        view = catalog.course_view(s, program, with_classes=True)
        body = builder.course_body(s, program)
        stripe = publishing.stripe_state(s, publishing.COURSE, program, stripe_mode())
        offered = builder.offered_classes(s)
    taken = {o["class_id"] for step in view["steps"] for o in step["options"]}
    return render_template("dashboard/catalog_course.html", course=view, stripe=stripe, may_edit=_may_edit(),
                           offered=[c for c in offered if c["class_id"] not in taken],
                           price=builder.major_units(view["price"]["amount"], view["price"]["currency"]),
                           base=builder.fingerprint(body), bundle_kinds=[k.value for k in BundleKind],
                           bundle={b["kind"]: b["quantity"] for b in view["bundle"]})


@bp.post("/courses/<code>/edit")
@dashboard_role("owner")
def edit_course(code: str):
    """One edit. A published course (or one with enrollments) shows the what-if first; `confirm` saves it."""
    form = _form()
    edit = form.pop("edit", None)
    confirm, base, reason = form.pop("confirm", None) == "yes", form.pop("base", None), form.pop("reason", None)
    back = redirect(url_for("catalog_ui.course_page", code=code))
    try:
        with _runtime().db.session_scope() as s:
            program = catalog.get_program(s, code, lock=True)
            body = builder.course_body(s, program)
            if confirm and base != builder.fingerprint(body):
                raise ApiError(409, "stale", "the course changed since the what-if was shown; look again")
            course = catalog.parse_course(builder.edited(body, edit, form), code=code)
            impact = changes.course_change(session=s, course=course, detail=not confirm)  # confirmed: the summary
            asks_first = program.status is ProgramStatus.PUBLISHED or bool(impact.affected)
            if asks_first and not confirm:
                return render_template("dashboard/catalog_whatif.html", code=code, impact=impact.as_dict(),
                                       edit=edit, form=form, base=builder.fingerprint(body),
                                       described=builder.describe(edit, form))
            saved = catalog.save_course(session=s, course=course)
            roles.record_action(s, "course.save", f"course:{code}", roles.reason_of({"reason": reason}),
                                change=saved.change, edit=builder.describe(edit, form), **impact.summary())
    except (TaskError, ApiError) as exc:
        flash(f"Not saved: {dashboard.refusal(exc)}", "error")
        return back
    flash(f"Saved: {builder.describe(edit, form)}"
          + (f" ({impact.summary()['enrollments_affected']} enrollment(s) affected)." if asks_first else "."), "ok")
    return back


@bp.post("/courses/<code>/publish")
@dashboard_role("owner")
def publish_course(code: str):
    return _publish(publishing.COURSE, code, url_for("catalog_ui.course_page", code=code))


# --------------------------------------------------------------------------- packages


@bp.get("/packages/<code>")
@dashboard_role("viewer")
def package_page(code: str):
    with _runtime().db.session_scope() as s:
        package = catalog.get_package(s, code)
        view = {**catalog.package_view(package), "status": builder.package_status(package)}
        stripe = publishing.stripe_state(s, publishing.PACKAGE, package, stripe_mode())
    return render_template("dashboard/catalog_package.html", package=view, stripe=stripe, may_edit=_may_edit(),
                           price=builder.major_units(view["price"]["amount"], view["price"]["currency"]),
                           credit_types=[t.value for t in CreditType])


@bp.post("/packages")
@dashboard_role("owner")
def create_package():
    return _save_package((request.form.get("code") or "").strip(), creating=True)


@bp.post("/packages/<code>")
@dashboard_role("owner")
def save_package(code: str):
    return _save_package(code, creating=False)


def _save_package(code: str, *, creating: bool):
    try:
        package = catalog.parse_package(builder.package_body(_form()), code=code)
        with _first_creator("package", code) if creating else nullcontext(), _runtime().db.session_scope() as s:
            if creating and catalog.live_package(s, code) is not None:
                raise ApiError(409, "conflict", f"package {code!r} exists already; open it to edit")
            if not creating:
                catalog.get_package(s, code)  # an edit names a package that exists
            saved = catalog.save_package(session=s, package=package)
            roles.record_action(s, "package.save", f"package:{code}", roles.reason_of(request.form),
                                change=saved.change)
    except (TaskError, ApiError) as exc:
        flash(f"Not saved: {dashboard.refusal(exc)}", "error")
        return redirect(url_for("catalog_ui.package_page", code=code) if not creating
                        else url_for("catalog_ui.catalog_page"))
    flash(f"Package {code} {saved.change}." + (" Publish it to put the change on sale." if saved.change != "unchanged"
                                                else ""), "ok")
    return redirect(url_for("catalog_ui.package_page", code=code))


@bp.post("/packages/<code>/publish")
@dashboard_role("owner")
def publish_package(code: str):
    return _publish(publishing.PACKAGE, code, url_for("catalog_ui.package_page", code=code))


def _publish(kind: str, code: str, back: str):
    try:
        queue_publish(kind, code, roles.reason_of(request.form))
    except (TaskError, ApiError) as exc:
        flash(f"Not published: {dashboard.refusal(exc)}", "error")
    else:
        flash(f"Publishing {kind} {code} to Stripe: the worker makes the calls; the ids appear here when done.",
              "ok")
    return redirect(back)
