"""The ops dashboard: server-rendered pages under /admin/ behind a login, and the course report.

- `GET|POST /admin/login` checks an admin's e-mail and password (or, with the e-mail left empty,
  ADMIN_TOKEN as the password: the owner's break-glass login) and opens a server-side session
  (`ingress.roles`); `POST /admin/logout` revokes it. HTML pages use the cookie; the JSON API a bearer.
- Pages need a viewer; every action here an operator. Each action writes its audit entry.
- Every POST here carries the session's CSRF token in a hidden field (checked before the view runs).
- Actions commit first, then send the message that gets the row moving (never inside the transaction):
  Replay (inbox), Retry (dead outbox row), Re-fulfil (an enrollment).
- `GET /admin/reports/courses` is the JSON report (bearer token, or the dashboard
  cookie), `?format=csv` the same as CSV.
"""
from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from coursepipe.logs import audit_logger
from db.enums import InboxStatus
from db.models import InboxEvent, OutboxMessage
from db.types import utcnow
from ingress import charts, limits, roles
from ingress.bodies import decimal
from ingress.admin_disputes import submit_or_error
from ingress.auth import _matches
from ingress.errors import ApiError
from tasks.admins import accounts
from tasks.messaging import delivery
from tasks.messaging.mail import money
from tasks.enrollments import services as enrollments
from tasks.errors import NotFound, TaskError
from tasks.inbox import admin as inbox
from tasks.inbox.store import is_pruned
from tasks.purchases import evidence, fulfilment
from tasks.reporting import links, ops, reports, timeline
from workers import job_runs
from workers.actors import enqueue_inbox, send
from workers.queue_depths import queue_depths

bp = Blueprint("dashboard", __name__, url_prefix="/admin", template_folder="templates")

CSRF_FIELD = "csrf_token"
SESSION_CSRF = "csrf"
REFRESH_WHILE = (InboxStatus.PENDING.value, InboxStatus.PROCESSING.value)


def _runtime():
    return current_app.config["COURSEPIPE_RUNTIME"]


def _settings():
    return current_app.config["COURSEPIPE_SETTINGS"]


def csrf_token() -> str:
    token = session.get(SESSION_CSRF)
    if not token:
        token = session[SESSION_CSRF] = secrets.token_urlsafe(32)
    return token


@bp.app_context_processor
def _template_globals():
    # money: minor units to "12.50 EUR" / "1200 JPY", the same words the e-mails use
    return {"csrf_token": csrf_token, "CSRF_FIELD": CSRF_FIELD, "money": money}


@bp.before_request
def _check_csrf():
    if request.method != "POST":
        return None
    expected = session.get(SESSION_CSRF)
    given = request.form.get(CSRF_FIELD, "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(403, "csrf_failed", "the form's CSRF token is missing or does not match this session")
    return None


# no scripts at all; inline styles only; never framed (clickjacking); pages never cached
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@bp.after_request
def _security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


login_required = roles.dashboard_role()  # a live session: viewer to read, operator to act


def page_blueprint(name: str, import_name: str, url_prefix: str) -> Blueprint:
    """A blueprint of dashboard pages beside this one: its forms carry the session's CSRF token and its
    answers the security headers, as here."""
    pages = Blueprint(name, import_name, url_prefix=url_prefix, template_folder="templates")
    pages.before_request(_check_csrf)
    pages.after_request(_security_headers)
    return pages


def refusal(exc: Exception) -> str:
    """What a page says when an action was refused (an API error's message, a domain error's text)."""
    return exc.message if isinstance(exc, ApiError) else str(exc)


def _safe_next(target: str | None) -> str:
    # only a path on this site: never an absolute or scheme-relative URL (no open redirect)
    # nor one with a control character (CR/LF would split the Location header)
    if (target and target.startswith("/admin") and not target.startswith("//") and target.isprintable()
            and not urlsplit(target).netloc):
        return target
    return url_for("dashboard.home")


# --------------------------------------------------------------------------- login


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = None
    if request.method == "POST" and not limits.password_check_allowed():
        return render_template("dashboard/login.html", error="Too many login attempts from this address: wait a "
                               "minute.", next=request.values.get("next", "")), 429
    if request.method == "POST":
        email, password = request.form.get("email", "").strip(), request.form.get("password", "")
        principal, fingerprint = None, None
        with _runtime().db.session_scope() as s:
            if not email and _matches(password, _settings().admin_token):  # break-glass
                principal, fingerprint = accounts.Principal.break_glass(), roles.break_glass_fingerprint()
            elif email:
                account = accounts.authenticate(session=s, email=email, password=password)
                if account is not None:
                    principal = accounts.Principal(actor=account.email, role=account.role, admin_id=account.id)
            if principal is not None:
                # a login over another in the same browser ends that one's server-side session too: its cookie,
                # copied before, must not stay valid once the browser has moved on
                accounts.close_session(session=s, token=session.get(roles.SESSION_TOKEN))
                sid = accounts.open_session(session=s, principal=principal, credential_fingerprint=fingerprint,
                                            lifetime=timedelta(hours=_settings().admin_session_hours))
        if principal is not None:
            session.clear()
            session.permanent = True
            session[roles.SESSION_TOKEN] = sid
            session[SESSION_CSRF] = secrets.token_urlsafe(32)  # a fresh token after login
            return redirect(_safe_next(request.form.get("next")))
        error = "That e-mail and password (or admin token) are not valid."
        audit_logger().warning("dashboard login refused", extra={"event": {"remote": request.remote_addr}})
    status = 401 if error else 200
    return render_template("dashboard/login.html", error=error, next=request.values.get("next", "")), status


@bp.post("/logout")
def logout():
    with _runtime().db.session_scope() as s:
        accounts.close_session(session=s, token=session.get(roles.SESSION_TOKEN))
    session.clear()
    return redirect(url_for("dashboard.login"))


# --------------------------------------------------------------------------- pages


@bp.get("/")
@login_required
def home():
    rt = _runtime()
    query = request.args.get("q", "").strip()
    try:
        queues, queue_error = [q.as_dict() for q in queue_depths(rt.broker)], None
    except Exception as exc:  # the broker is down: the page still shows what the database knows
        # its text names hosts and ports: in the log, for whoever runs the service, not on a viewer's page
        current_app.logger.warning("dashboard: broker unreachable: %s: %s", type(exc).__name__, exc)
        queues, queue_error = [], f"{type(exc).__name__} (the details are in the log)"
    with rt.db.session_scope() as s:
        inbox = ops.inbox_summary(session=s, recent=True)
        problems = [_event_row(e) for e in ops.problem_events(session=s)]
        failed_types = ops.failed_types(session=s)
        outbox = ops.outbox_summary(session=s)
        dead = [_message_row(m) for m in ops.dead_messages(session=s)]
        enrollments = ops.search_enrollments(session=s, query=query, limit=ops.SEARCH_LIMIT if query else 20)
        report = reports.course_report(session=s)
        disputes = [_dispute_row(d) for d in evidence.open_disputes(session=s)]
    reconciled, reconcile_result = job_runs.last_result(rt.db, "reconcile")
    return render_template(
        "dashboard/home.html", queues=queues, queue_error=queue_error, inbox=inbox, problems=problems,
        failed_types=failed_types, disputes=disputes, reconciled=reconciled, reconcile_result=reconcile_result,
        outbox=outbox, dead=dead, enrollments=enrollments, query=query, report=report, now=utcnow(),
    )


@bp.get("/ui/events/<int:inbox_id>")
@login_required
def event_page(inbox_id: int):
    with _runtime().db.session_scope() as s:
        event = s.get(InboxEvent, inbox_id)
        if event is None:
            raise ApiError(404, "not_found", f"no inbox event {inbox_id}")
        row = _event_row(event)
        payload = event.payload
        related = links.event_links(session=s, inbox_id=inbox_id)
        effects = timeline.event_timeline(session=s, inbox_id=inbox_id)
    return render_template("dashboard/event.html", event=row, payload=payload, related=related, effects=effects,
                           refresh=row["status"] in REFRESH_WHILE)


@bp.get("/ui/enrollments/<int:enrollment_id>")
@login_required
def enrollment_page(enrollment_id: int):
    with _runtime().db.session_scope() as s:
        enrollment = enrollments.get_enrollment(s, enrollment_id)
        if enrollment is None:
            raise ApiError(404, "not_found", f"no enrollment {enrollment_id}")
        view = enrollments.enrollment_view(s, enrollment)
        # the row of this enrollment: a search by the id would also match a student whose id is that number
        row = ops.enrollment_row(enrollment, enrollments.program_of(s, enrollment).code)
        chosen = timeline.parse_kinds(request.args.getlist("kind"))
        rows = timeline.enrollment_timeline(session=s, enrollment_id=enrollment_id, kinds=chosen)
        events = links.enrollment_events(session=s, enrollment_id=enrollment_id)
    return render_template("dashboard/enrollment.html", enrollment=row, view=view, timeline=rows, events=events,
                           kinds=timeline.KINDS, chosen=chosen or ())


@bp.get("/ui/reports")
@login_required
def report_page():
    raw = request.args.get("weeks", "12").strip()
    try:
        weeks = decimal(raw)
    except ValueError:
        weeks = raw  # refused by activity_by_week, naming the field
    with _runtime().db.session_scope() as s:
        activity = reports.activity_by_week(session=s, weeks=weeks)
        report = reports.course_report(session=s)
        packages = reports.package_report(session=s)
    return render_template("dashboard/reports.html", report=report, packages=packages, activity=activity,
                           weeks=weeks, chart=charts.weekly_bars(activity))


@bp.get("/ui/disputes/<dispute_id>")
@login_required
def dispute_page(dispute_id: str):
    with _runtime().db.session_scope() as s:
        dispute = evidence.view(session=s, stripe_dispute_id=dispute_id)  # unknown: the app's 404
    return render_template("dashboard/dispute.html", dispute=dispute, fields=evidence.FIELDS)


# --------------------------------------------------------------------------- actions


@bp.post("/ui/disputes/<dispute_id>/submit")
@login_required
def submit_dispute_evidence(dispute_id: str):
    try:
        outcome = submit_or_error(_runtime(), dispute_id, roles.reason_of(request.form))
    except ApiError as exc:
        if exc.status == 404:
            raise
        flash(f"Evidence for {dispute_id} not submitted: {exc.message}", "error")
        return redirect(url_for("dashboard.dispute_page", dispute_id=dispute_id))
    result = outcome.view
    audit_logger().info("dashboard dispute evidence", extra={"event": {
        "dispute_id": dispute_id, "outcome": result["evidence_status"], "error": result["error"]}})
    if result["evidence_status"] == evidence.SUBMITTED:
        flash(f"Evidence for {dispute_id} submitted to Stripe.", "ok")
    elif outcome.unknown:
        flash(f"Stripe could not be reached for the evidence of {dispute_id} ({result['error']}): submit it "
              "again (nothing is sent twice).", "error")
    else:
        flash(f"Stripe refused the evidence for {dispute_id}: {result['error']}", "error")
    return redirect(url_for("dashboard.dispute_page", dispute_id=dispute_id))


@bp.post("/ui/events/<int:inbox_id>/replay")
@login_required
def replay(inbox_id: int):
    try:
        with _runtime().db.session_scope() as s:
            inbox.replay(session=s, inbox_id=inbox_id)
            roles.record_action(s, "event.replay", f"inbox_event:{inbox_id}", roles.reason_of(request.form))
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except inbox.NotReplayable as exc:
        flash(str(exc), "error")
        return redirect(url_for("dashboard.event_page", inbox_id=inbox_id))
    enqueue_inbox([inbox_id])  # after the commit; if the broker is down the sweeper re-sends it
    audit_logger().info("dashboard replay", extra={"event": {"inbox_id": inbox_id, "outcome": "replayed"}})
    flash(f"Event {inbox_id} queued for replay.", "ok")
    return redirect(url_for("dashboard.event_page", inbox_id=inbox_id))


@bp.post("/ui/events/replay-failed")
@login_required
def replay_failed():
    type_ = request.form.get("type") or None
    with _runtime().db.session_scope() as s:
        ids = ops.replay_failed(session=s, type_=type_)
        roles.record_action(s, "event.replay_failed", f"type:{type_}" if type_ else None,
                            roles.reason_of(request.form), inbox_ids=ids)
    enqueue_inbox(ids)
    audit_logger().info("dashboard bulk replay", extra={"event": {"type": type_, "inbox_ids": ids,
                                                                      "outcome": "replayed"}})
    flash(f"{len(ids)} failed event(s){' of type ' + type_ if type_ else ''} queued for replay.", "ok")
    return redirect(url_for("dashboard.home"))


@bp.post("/ui/outbox/<int:message_id>/retry")
@login_required
def retry(message_id: int):
    try:
        with _runtime().db.session_scope() as s:
            message = delivery.retry(session=s, message_id=message_id)
            status = message.status.value
            roles.record_action(s, "outbox.retry", f"outbox_message:{message_id}", roles.reason_of(request.form))
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except TaskError as exc:  # e.g. an illegal move (already sent)
        flash(f"Message {message_id} cannot be retried: {exc}", "error")
        return redirect(url_for("dashboard.home"))
    send("relay_outbox")
    audit_logger().info("dashboard outbox retry", extra={"event": {"outbox_id": message_id, "outcome": status}})
    flash(f"Message {message_id} is {status}; the relay was asked to send it.", "ok")
    return redirect(url_for("dashboard.home"))


@bp.post("/ui/enrollments/<int:enrollment_id>/refulfill")
@login_required
def refulfill(enrollment_id: int):
    """`tasks.purchases.fulfilment.refulfill` (idempotent: creates only what is missing)."""

    try:
        with _runtime().db.session_scope() as s:
            done = fulfilment.refulfill(session=s, enrollment_id=enrollment_id).as_dict()
            created = {k: v for k, v in done.items() if k not in ("enrollment_id", "status") and v}
            roles.record_action(s, "enrollment.refulfill", f"enrollment:{enrollment_id}", roles.reason_of(request.form),
                                created=created)
    except NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except TaskError as exc:  # NotFulfillable: pending, failed, revoked
        flash(f"Enrollment {enrollment_id} was not re-fulfilled: {exc}", "error")
        return redirect(url_for("dashboard.enrollment_page", enrollment_id=enrollment_id))
    send("relay_outbox")  # a re-announced enrollment may have written outbox rows
    audit_logger().info("dashboard refulfill", extra={"event": {"enrollment_id": enrollment_id,
                                                                    "outcome": "refulfilled", "created": created}})
    flash(f"Enrollment {enrollment_id} re-fulfilled: "
          + (", ".join(f"{k} {v}" for k, v in created.items()) or "nothing was missing") + ".", "ok")
    return redirect(url_for("dashboard.enrollment_page", enrollment_id=enrollment_id))


# --------------------------------------------------------------------------- report API


@bp.get("/reports/courses")
def reports_courses():
    """JSON (or `?format=csv`): a bearer (ADMIN_TOKEN or a personal token), or a dashboard session."""
    roles.any_principal("viewer")
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "invalid_format", "format must be json or csv")
    with _runtime().db.session_scope() as s:
        report = reports.course_report(session=s)
        packages = reports.package_report(session=s) if fmt == "json" else []
    if fmt == "csv":
        return Response(reports.report_csv(report), content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="course-report.csv"'})
    return jsonify({"generated_at": utcnow().isoformat(), "courses": report, "packages": packages})


# --------------------------------------------------------------------------- rows


def _dispute_row(dispute) -> dict:
    return {"id": dispute.stripe_dispute_id, "amount": dispute.amount, "currency": dispute.currency,
            "reason": dispute.reason, "due_by": dispute.evidence_due_by, "enrollment_id": dispute.enrollment_id,
            "evidence_status": dispute.evidence_status or evidence.DRAFT}


def _event_row(event: InboxEvent) -> dict:
    return {
        "id": event.id, "source": event.source.value, "event_id": event.event_id, "type": event.type,
        "subject": event.subject, "status": event.status.value, "attempts": event.attempts,
        "last_error": event.last_error, "waiting_for": event.waiting_for, "received_at": event.received_at,
        "processed_at": event.processed_at, "pruned": is_pruned(event.payload),
    }


def _message_row(message: OutboxMessage) -> dict:
    return {
        "id": message.id, "channel": message.channel.value, "topic": message.topic, "recipient": message.recipient,
        "status": message.status.value, "attempts": message.attempts, "last_error": message.last_error,
        "created_at": message.created_at, "enrollment_id": message.enrollment_id,
    }
