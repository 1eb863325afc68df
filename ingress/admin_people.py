"""The studio's people: admin accounts, personal API tokens and the audit log.

JSON (bearer): `GET /admin/me`; `POST /admin/tokens` {name} → 201 with the token, shown once;
`DELETE /admin/tokens/<id>`; `GET|POST /admin/admins`, `DELETE /admin/admins/<email>` (owner);
`GET /admin/audit?actor=&action=&target=&limit=` (viewer).
Dashboard: `/admin/ui/audit` (the log) and `/admin/ui/account` (your tokens: create, revoke).
"""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template, request

from ingress import dashboard, roles
from ingress.bodies import json_object
from ingress.errors import ApiError, error_response
from ingress.paging import page_args, read_page
from ingress.roles import dashboard_role, require_role
from tasks.admins import accounts, audit

bp = Blueprint("admin_people", __name__, url_prefix="/admin", template_folder="templates")


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


@bp.before_request
def _dashboard_forms_carry_csrf():
    if request.path.startswith("/admin/ui/"):
        return dashboard._check_csrf()
    return None


@bp.after_request
def _security_headers(response):
    if request.path.startswith("/admin/ui/"):
        return dashboard._security_headers(response)
    return response


@bp.errorhandler(accounts.AccountExists)
def _exists(exc: accounts.AccountExists):  # any other ValidationFailed is the app's 400
    return error_response(409, "conflict", str(exc), field=exc.field)


def _own_account_id() -> int:
    principal = roles.current_principal()
    if principal.admin_id is None:
        raise ApiError(409, "no_account", "the break-glass ADMIN_TOKEN has no account: log in as an admin to "
                                          "make personal tokens")
    return principal.admin_id


# --------------------------------------------------------------------------- me and my tokens


@bp.get("/me")
@require_role("viewer")
def me():
    principal = roles.current_principal()
    tokens = []
    if principal.admin_id is not None:
        with _runtime().db.session_scope() as s:
            tokens = [accounts.token_view(t) for t in accounts.list_tokens(session=s, admin_id=principal.admin_id)]
    return jsonify({"actor": principal.actor, "role": principal.role, "tokens": tokens})


@bp.post("/tokens")
@require_role("viewer")
def create_token():
    admin_id = _own_account_id()
    with _runtime().db.session_scope() as s:
        row, token = accounts.create_token(session=s, admin_id=admin_id, name=json_object("name").get("name"))
        roles.record_action(s, "token.create", f"admin_api_token:{row.id}", name=row.name)
        view = accounts.token_view(row)
    return jsonify({**view, "token": token}), 201


@bp.delete("/tokens/<int:token_id>")
@require_role("viewer")
def revoke_token(token_id: int):
    admin_id = _own_account_id()
    with _runtime().db.session_scope() as s:
        row, revoked = accounts.revoke_token(session=s, admin_id=admin_id, token_id=token_id)
        if revoked:  # a repeat answers the same and audits nothing more
            roles.record_action(s, "token.revoke", f"admin_api_token:{token_id}")
        view = accounts.token_view(row)
    return jsonify(view)


# --------------------------------------------------------------------------- admins (owner)


@bp.get("/admins")
@require_role("owner")
def list_admins():
    with _runtime().db.session_scope() as s:
        return jsonify({"admins": [accounts.admin_view(a) for a in accounts.list_admins(session=s)]})


@bp.post("/admins")
@require_role("owner")
def add_admin():
    data = json_object("email", "role", "password", "reason")
    with _runtime().db.session_scope() as s:
        account = accounts.add_admin(session=s, email=data.get("email"), role=data.get("role"),
                                     password=data.get("password"))
        roles.record_action(s, "admin.add", f"admin:{account.email}", roles.reason_of(data), role=account.role)
        view = accounts.admin_view(account)
    return jsonify(view), 201


@bp.delete("/admins/<email>")
@require_role("owner")
def remove_admin(email: str):
    with _runtime().db.session_scope() as s:
        account = accounts.remove_admin(session=s, email=email)
        roles.record_action(s, "admin.remove", f"admin:{account.email}",
                            roles.reason_of(json_object(optional=True)))
    return jsonify({"email": account.email, "removed": True})


# --------------------------------------------------------------------------- audit


def _audit_page() -> tuple[dict, list[dict], int | None]:
    """The filters asked for, one page of the entries they select, and the next page's `before`."""
    page = page_args(default=100)
    query = {"actor": request.args.get("actor") or None, "action": request.args.get("action") or None,
             "target": request.args.get("target") or None}
    with _runtime().db.session_scope() as s:
        rows, next_before = read_page(page, lambda limit, before: audit.entries(session=s, limit=limit,
                                                                                before=before, **query))
        return query | {"limit": page.limit}, [audit.entry_view(e) for e in rows], next_before


@bp.get("/audit")
@require_role("viewer")
def audit_log():
    _query, entries, next_before = _audit_page()
    return jsonify({"entries": entries, "next_before": next_before})


@bp.get("/ui/audit")
@dashboard_role("viewer")
def audit_page():
    query, entries, next_before = _audit_page()
    return render_template("dashboard/audit.html", entries=entries, query=query, next_before=next_before)


# --------------------------------------------------------------------------- my account (dashboard)


def _account_page(new_token: str | None = None, status: int = 200):
    principal = roles.current_principal()
    tokens = []
    if principal.admin_id is not None:
        with _runtime().db.session_scope() as s:
            tokens = [accounts.token_view(t) for t in accounts.list_tokens(session=s, admin_id=principal.admin_id)]
    return render_template("dashboard/account.html", principal=principal, tokens=tokens, new_token=new_token), status


@bp.get("/ui/account")
@dashboard_role("viewer")
def account_page():
    return _account_page()


@bp.post("/ui/account/tokens")
@dashboard_role("viewer")
def account_create_token():
    admin_id = _own_account_id()
    with _runtime().db.session_scope() as s:
        row, token = accounts.create_token(session=s, admin_id=admin_id, name=request.form.get("name", ""))
        roles.record_action(s, "token.create", f"admin_api_token:{row.id}", name=row.name)
    # rendered in this answer only: never put in the (signed, not encrypted) session cookie
    return _account_page(new_token=token, status=201)


@bp.post("/ui/account/tokens/<int:token_id>/revoke")
@dashboard_role("viewer")
def account_revoke_token(token_id: int):
    admin_id = _own_account_id()
    with _runtime().db.session_scope() as s:
        _, revoked = accounts.revoke_token(session=s, admin_id=admin_id, token_id=token_id)
        if revoked:
            roles.record_action(s, "token.revoke", f"admin_api_token:{token_id}")
    return _account_page()
