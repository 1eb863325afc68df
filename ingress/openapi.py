"""GET /openapi.json: the OpenAPI 3.1 description of every route, built from the app itself.

Paths, methods and path parameters come from Flask's url_map; each operation's words and schemas
come from `OPERATIONS` below (a route missing there is a test failure, so the document cannot fall
behind the code). Event schemas come from the pydantic models the code validates with:
`PlatformEvent.<type>` (inbound, `tasks.events`) and `OutboundEvent.<type>` (`tasks.messaging.outbound_events`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, get_args

from flask import Blueprint, Flask, current_app, jsonify

from db.enums import (BundleKind, CreditType, DisputeStatus, EnrollmentStatus, InboxSource, InboxStatus,
                      LedgerEntryType, ProgramStatus, ProgressStatus, PurchaseStatus)
from ingress import limits, paging
from ingress.errors import CONFLICT_MESSAGE
from tasks.admins.accounts import MIN_PASSWORD_LENGTH, ROLES
from tasks.admins.audit import MAX_REASON
from tasks.catalog import publishing
from tasks.catalog.changes import MAX_LISTED
from tasks.catalog.services import CODE_PATTERN, MAX_STEPS, PRICE_ID_PATTERN, CourseIn, CreditsIn, PackageIn, StepIn
from tasks.events import PLATFORM_DATA
from tasks.ledger.adjustments import MAX_ADJUSTMENT
from tasks.messaging.outbound_events import OUTBOUND_DATA
from tasks.purchases import evidence
from tasks.reporting.timeline import KINDS as TIMELINE_KINDS

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
JSON = "application/json"


def ref(name: str, description: str | None = None) -> dict:
    return {"$ref": f"#/components/schemas/{name}", **({"description": description} if description else {})}


def _obj(properties: dict, required: list[str] | None = None, **extra) -> dict:
    return {"type": "object", "properties": properties, "required": required or list(properties), **extra}


def _closed(properties: dict, *, required: list[str]) -> dict:
    """A request body: these fields only (any other is refused 400, naming it)."""
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


NULLABLE_STR = {"type": ["string", "null"]}
NEXT_BEFORE = {"type": ["integer", "null"], "minimum": 1,
               "description": "pass it as `before` for the next (older) page; null: this page is the last"}
ID_64 = {"type": "string", "minLength": 1, "maxLength": 64}
REASON = {"type": "string", "minLength": 1, "maxLength": MAX_REASON,
          "description": "why, for the audit log and the admins' pages; not sent to the platform"}
# a credit adjustment's reason is also its line on the platform's credit statement
ADJUSTMENT_REASON = {**REASON, "description": (
    "why, for the audit log; also the cause in words of the adjustment's line on the student's credit statement "
    "(`GET /v1/students/{student_id}/credits/statement`: \"2 group credits added by the studio: <reason>\"), "
    "which the platform reads and may show the student, so write it for the student. The statement does not "
    "say which admin made it; the audit log and the dashboard do.")}
ENROLLMENT_STATUS = {"enum": ["pending", "active", "suspended", "revoked", "completed", "failed"],
                     "description": "pending: an asynchronous payment not settled yet; suspended: a dispute is open "
                                    "(no new step bookings); revoked: refunded in full, a dispute lost, or by hand; "
                                    "completed: every step completed; failed: the asynchronous payment failed "
                                    "(nothing granted)"}
NULLABLE_INT = {"type": ["integer", "null"]}
DATETIME = {"type": "string", "format": "date-time"}
# every kind of credit, each with its count (zeros included)
CREDIT_BALANCES = _obj({t.value: {"type": "integer"} for t in CreditType}, additionalProperties=False)
PRICE = _obj({"amount": {"type": "integer", "description": "minor units; that of stripe_price_id, the price a "
                                                              "checkout charges (an edit shows once published)"},
              "currency": {"type": "string"},
              "stripe_price_id": NULLABLE_STR})

SCHEMAS: dict[str, dict] = {
    "Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"}})}),
    "Received": _obj({"received": {"const": True}, "duplicate": {"type": "boolean"}}),
    "Price": PRICE,
    "CourseSummary": _obj({
        "code": {"type": "string"}, "title": {"type": "string"}, "description": NULLABLE_STR,
        "marketing_copy": NULLABLE_STR, "timezone": {"type": "string"}, "price": ref("Price"),
        "published": {"type": "boolean"},
        "bundle": {"type": "array", "items": _obj({"kind": {"type": "string"}, "quantity": {"type": "integer"}})},
        "steps": {"type": "array", "items": _obj({"id": {"type": "integer"}, "label": {"type": "string"},
                                                  "position": {"type": "integer"}, "title": NULLABLE_STR})}}),
    "CourseList": _obj({"courses": {"type": "array", "items": ref("CourseSummary")}}),
    "StepOption": _obj({"class_id": {"type": "string"}, "starts_at": NULLABLE_STR, "ends_at": NULLABLE_STR,
                        "seats_left": NULLABLE_INT, "status": NULLABLE_STR}),
    "Course": _obj({
        "code": {"type": "string"}, "title": {"type": "string"}, "published": {"type": "boolean"},
        "price": ref("Price"),
        "steps": {"type": "array", "items": _obj({
            "id": {"type": "integer"}, "label": {"type": "string"}, "position": {"type": "integer"},
            "title": NULLABLE_STR, "options": {"type": "array", "items": ref("StepOption")}},
            ["id", "label", "position", "title", "options"])}},
        ["code", "title", "published", "price", "steps"]),
    "Package": _obj({"code": {"type": "string"}, "title": {"type": "string"}, "price": ref("Price"),
                     "credits": {"type": "array", "items": _obj({"kind": {"enum": ["group", "private"]},
                                                                 "quantity": {"type": "integer"}})},
                     "validity_days": NULLABLE_INT}),
    "PackageList": _obj({"packages": {"type": "array", "items": ref("Package")}}),
    "Enrollment": _obj({
        "id": {"type": "integer"}, "course_code": {"type": "string"}, "course_title": {"type": "string"},
        "status": ENROLLMENT_STATUS,
        "purchased_at": {**NULLABLE_STR, "format": "date-time",
                         "description": "when the enrollment was recorded (its checkout, or by hand)"},
        "steps": {"type": "array", "description": "its progress on the course's live steps, in order", "items": _obj({
            "course_step_id": {"type": "integer"}, "label": {"type": "string"}, "position": {"type": "integer"},
            "title": NULLABLE_STR, "status": {"enum": [s.value for s in ProgressStatus]},
            "booking_id": NULLABLE_STR, "class_id": {**NULLABLE_STR, "description": "the class booked or attended"},
            "skipped_ahead": {"type": "boolean", "description": "booked while an earlier step was still unbooked"}})},
        "next_step": {"oneOf": [{"type": "null"}, _obj({"course_step_id": {"type": "integer"},
                                                        "label": {"type": "string"}})],
                      "description": "the first step unbooked or missed; null when there is none, or when "
                                     "the course was deleted (its steps cannot be booked)"},
        "completed_steps": {"type": "integer"}, "total_steps": {"type": "integer"},
        "credits": {**CREDIT_BALANCES, "description": "the unexpired credits left of the enrollment's bundle, "
                                                     "by kind"}}),
    "StudentCourses": _obj({"student_id": {"type": "string"},
                            "enrollments": {"type": "array", "items": ref("Enrollment")}}),
    "Credits": _obj({"student_id": {"type": "string"},
                     "balances": {"type": "object", "additionalProperties": {"type": "integer"}}}),
    "CreditStatement": _obj({
        "student_id": {"type": "string"},
        "entries": {"type": "array", "description": "oldest first", "items": _obj({
            "id": {**NULLABLE_INT, "description": "the ledger entry; null for the expiry of a lot's unused credits"},
            "at": DATETIME, "kind": {"enum": [t.value for t in CreditType]},
            "entry_type": {"enum": [t.value for t in LedgerEntryType]},
            "quantity": {"type": "integer", "description": "+ adds to the balance, - takes from it"},
            "cause": {"type": "string", "description": "the entry's cause key (`enrollment:12:bundle`, …)"},
            "lot": {"type": "integer", "description": "the grant the entry belongs to (its own id for a grant)"},
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
            "description": {"type": "string", "description": "the cause in words, fit to show the student"},
            "counted": {"type": "boolean",
                        "description": "false: an entry on a lot after its expiry, which moves no balance"},
            "balance": {"type": "integer", "description": "this kind's balance after the entry"},
            "balances": {"type": "object", "additionalProperties": {"type": "integer"},
                         "description": "every kind's balance after the entry"}})},
        "balances": {"type": "object", "additionalProperties": {"type": "integer"},
                     "description": "the closing balances, equal to `GET /v1/students/{student_id}/credits`"}}),
    "Eligibility": _obj({"eligible": {"type": "boolean"}, "reason": NULLABLE_STR}),
    "Calendar": _obj({"from": DATETIME, "to": DATETIME, "classes": {"type": "array", "items": _obj({
        "class_id": {"type": "string"}, "title": NULLABLE_STR, "starts_at": DATETIME, "ends_at": NULLABLE_STR,
        "seats_left": {"type": "integer"}, "course_steps": {"type": "array", "items": _obj({
            "course_code": {"type": "string"}, "course_step_id": {"type": "integer"},
            "label": {"type": "string"}, "position": {"type": "integer"}})}},
        ["class_id", "starts_at", "seats_left", "course_steps"])},
        "next_from": {**NULLABLE_STR, "format": "date-time",
                      "description": "null when every class of the window is listed; else ask again with this "
                                     "as `from` (a page holds at most 2,000 classes)"}}),
    "CheckoutRequest": {"type": "object", "required": ["student_id", "success_url", "cancel_url"],
                        "properties": {"student_id": {"type": "string", "minLength": 1, "maxLength": 64},
                                       "course_code": {"type": "string"}, "package_code": {"type": "string"},
                                       "success_url": {"type": "string", "format": "uri"},
                                       "cancel_url": {"type": "string", "format": "uri"}},
                        "oneOf": [{"required": ["course_code"]}, {"required": ["package_code"]}]},
    "CheckoutCreated": _obj({"id": {"type": "string"}, "url": {"type": "string"}}),
    "CheckoutState": _obj({
        "id": {"type": "string"}, "status": NULLABLE_STR, "payment_status": NULLABLE_STR,
        "enrollment": {"oneOf": [{"type": "null"}, _obj({"id": {"type": "integer"}, "student_id": {"type": "string"},
                                                         "course_code": NULLABLE_STR, "status": ENROLLMENT_STATUS})]},
        "credits_granted": {"oneOf": [{"type": "null"},
                                      {"type": "object", "additionalProperties": {"type": "integer"}}]}}),
    "EventFeed": _obj({"events": {"type": "array", "items": ref("OutboundEvent")},
                       "next": {"type": "string", "description": "the cursor to pass as `after` next time"}}),
    # the studio's manual operations: each says why (`reason`, for the audit log); no other field is taken
    "EnrollByHand": _closed({"student_id": ID_64, "course_code": ID_64, "reason": REASON,
                             "grant_bundle": {"type": "boolean"}},
                            required=["student_id", "course_code", "reason", "grant_bundle"]),
    "CreditAdjustment": _closed({"kind": {"enum": ["group", "private"]},
                                 "quantity": {"type": "integer", "minimum": -MAX_ADJUSTMENT, "maximum": MAX_ADJUSTMENT,
                                              "not": {"const": 0}},
                                 "reason": ADJUSTMENT_REASON,
                                 "expires_at": {"type": ["string", "null"], "format": "date-time"}},
                                required=["kind", "quantity", "reason"]),
    "Reason": _closed({"reason": REASON}, required=["reason"]),
    "RefundByHand": _closed({"amount": {"type": "integer", "minimum": 1,
                                        "description": "minor units; absent: what is left to refund"},
                             "keep_access": {"type": "boolean"}, "reason": REASON,
                             "preview": {"type": "boolean", "description": "true: what it would change, nothing done"}},
                            required=["keep_access", "reason"]),
    "RetriedDead": _obj({"retried": {"type": "integer"}, "ids": {"type": "array", "items": {"type": "integer"}},
                         "remaining": {"type": "integer", "description": "still dead: call again while above 0"}}),
}


# --------------------------------------------------------------------------- the admin catalog (tasks.catalog)
# The write bodies say exactly what `tasks.catalog.services` accepts (a test sends good and bad bodies to both):
# every string is trimmed of surrounding whitespace before it is checked, hence the patterns.


def trimmed(most: int, *, least: int = 0, nullable: bool = False) -> dict:
    """A string of `least` (0 or 1) to `most` characters once trimmed of surrounding whitespace."""
    some = rf"\S(?:[\s\S]{{0,{most - 2}}}\S)?"
    return {"type": ["string", "null"] if nullable else "string",
            "pattern": rf"^\s*{some if least else f'(?:{some})?'}\s*$",
            "description": f"{least} to {most} characters once surrounding whitespace is trimmed"
                           + ("; null: none" if nullable else "")}


def _padded(pattern: str) -> str:
    """`^…$` allowing the surrounding whitespace the code trims first."""
    return rf"^\s*{pattern.removeprefix('^').removesuffix('$')}\s*$"


def read_only(what: str) -> dict:
    return {"readOnly": True, "description": f"{what}; as GET answers it, taken back and ignored (any value)"}


def _one_of_each_kind(kinds) -> list[dict]:
    """Each kind at most once in a list of {kind, quantity}."""
    return [{"contains": {"type": "object", "properties": {"kind": {"const": k}}, "required": ["kind"]},
             "minContains": 0, "maxContains": 1} for k in kinds]


STRICT_INT = "an integer written without a fraction (12000.0 is refused)"
CATALOG_CODE = {"type": ["string", "null"], "pattern": _padded(CODE_PATTERN),
                "description": "1-64 letters, digits, '-' or '_', the first a letter or digit; optional, and when "
                               "given the code in the path"}
CATALOG_REASON = {"type": ["string", "null"],
                  "description": f"optional: why, for the audit log (its first {MAX_REASON} characters are kept)"}
CATALOG_TITLE = trimmed(200, least=1)
CATALOG_SCHEMAS: dict[str, dict] = {
    "PriceWrite": _closed({
        "amount": {"type": "integer", "minimum": 0, "maximum": 99_999_999, "description": f"minor units (cents; whole units in a zero-decimal currency such as jpy; "
                                  f"thousandths in a three-decimal one such as kwd, in steps of 10, as Stripe charges "
                                  f"them); {STRICT_INT}"},
        "currency": {"type": "string", "pattern": r"^\s*[A-Za-z]{3}\s*$",
                     "description": "an ISO 4217 code in circulation, either case (kept lower-case, as Stripe "
                                    "takes it); another three letters are refused"}},
        required=["amount", "currency"]),
    "StepWrite": _closed({
        "label": {**trimmed(64, least=1), "description": "the step's identity within the course (unique in it): "
                                                          "an edit keeps a step's id, progress and bookings by its "
                                                          "label; 1 to 64 characters once trimmed"},
        "title": trimmed(200, least=1, nullable=True),
        "summary": trimmed(20_000, nullable=True),
        "position": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_STEPS,
                     "description": "optional; when given, the step's place in the list (1 for the first)"},
        "options": {"type": "array", "uniqueItems": True, "default": [],
                    "items": {**trimmed(64, least=1), "description": "a platform class id (1 to 64 characters "
                                                                      "once trimmed)"},
                    "description": "the platform classes that may be booked for the step; a class serves one "
                                   "step only within a course"},
        **{name: read_only("the step's id (a step is known by its label)") for name in sorted(StepIn.READ_ONLY)}},
        required=["label"]),
    "BundleComponentWrite": _closed({
        "kind": {"enum": [k.value for k in BundleKind]},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000, "description": STRICT_INT}},
        required=["kind", "quantity"]),
    "CourseWrite": _closed({
        "code": CATALOG_CODE,
        "title": CATALOG_TITLE,
        "description": trimmed(20_000, nullable=True),
        "marketing_copy": trimmed(20_000, nullable=True),
        "timezone": {"type": "string", "default": "UTC",
                     "description": "an IANA timezone name (e.g. Europe/Berlin), exactly as the tz database "
                                    "spells it; default UTC"},
        "price": ref("PriceWrite"),
        "steps": {"type": "array", "minItems": 1, "maxItems": MAX_STEPS, "items": ref("StepWrite"),
                  "description": "in order; labels are unique in the course, and so is each class id"},
        "bundle": {"anyOf": [{"type": "array", "items": ref("BundleComponentWrite"),
                              "allOf": _one_of_each_kind(k.value for k in BundleKind)},
                             ref("BundleComponentWrite"), {"type": "null"}],
                   "default": [],
                   "description": "the credits every buyer receives, each kind at most once (one component may "
                                  "be given as the object alone; null or absent: none)"},
        "reason": CATALOG_REASON,
        **{name: read_only("set by publishing") for name in sorted(CourseIn.READ_ONLY)}},
        required=["title", "price", "steps"]),
    "CreditsWrite": _closed({
        "kind": {"enum": list(get_args(CreditsIn.model_fields["kind"].annotation)),
                 "description": "group or private (group_credit and private_credit mean the same)"},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 1000, "description": STRICT_INT}},
        required=["kind", "quantity"]),
    "PackageWrite": _closed({
        "code": CATALOG_CODE,
        "title": CATALOG_TITLE,
        "price": ref("PriceWrite"),
        "credits": {**ref("CreditsWrite"),
                    "description": "one `{kind, quantity}` object (a package grants one kind of credit), as "
                                   "`GET /admin/packages/{code}` answers it; a list is refused"},
        "validity_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 3650,
                          "description": "days a granted credit stays usable; null or absent: no expiry"},
        "stripe_price_id": {"type": ["string", "null"], "pattern": _padded(PRICE_ID_PATTERN),
                            "description": "present: link the package to a price made by hand in Stripe (null "
                                           "unlinks); absent: the link stays as it is. A price another package or "
                                           "a course holds is refused"},
        "reason": CATALOG_REASON,
        **{name: read_only("set by publishing") for name in sorted(PackageIn.READ_ONLY)}},
        required=["title", "price", "credits"]),
    # what GET /admin/… answers (and PUT answers under `course` / `package`)
    "StripeState": _obj({
        "product_id": NULLABLE_STR, "price_id": NULLABLE_STR,
        "in_sync": {"type": "boolean", "description": "Stripe holds what the catalog says"},
        "pending": {"type": "integer", "description": "publish calls not finished"},
        "last_error": NULLABLE_STR,
        "publications": {"type": "array", "description": "the last 10 publish calls", "items": _obj({
            "id": {"type": "integer"}, "object_type": {"type": "string"}, "action": {"type": "string"},
            "target": NULLABLE_STR, "status": {"type": "string"}, "stripe_id": NULLABLE_STR,
            "idempotency_key": {"type": "string"}, "last_error": NULLABLE_STR, "created_at": NULLABLE_STR})},
        "drift": {"type": "array", "items": ref("Drift")}}),
    "Drift": _obj({"id": {"type": "integer"}, "stripe_object_id": {"type": "string"},
                   "field": {"type": "string", "description": "the Stripe object's field that differs"},
                   "expected": {**NULLABLE_STR, "description": "what the catalog says, as text"},
                   "actual": {**NULLABLE_STR, "description": "what Stripe holds, as text"},
                   "event_id": {**NULLABLE_STR, "description": "the Stripe event that showed it"},
                   "detected_at": DATETIME}),
    "AdminCourse": _obj({
        "code": {"type": "string"}, "title": {"type": "string"}, "description": NULLABLE_STR,
        "marketing_copy": NULLABLE_STR, "timezone": {"type": "string"},
        "price": _obj({"amount": {"type": "integer"}, "currency": {"type": "string"}}),
        "status": {"enum": [s.value for s in ProgramStatus]}, "published": {"type": "boolean"},
        "published_at": {**NULLABLE_STR, "format": "date-time"},
        "steps": {"type": "array", "items": _obj({
            "id": {"type": "integer"}, "label": {"type": "string"}, "position": {"type": "integer"},
            "title": NULLABLE_STR, "summary": NULLABLE_STR,
            "options": {"type": "array", "items": {"type": "string"}, "description": "platform class ids"}})},
        "bundle": {"type": "array", "items": _obj({"kind": {"enum": [k.value for k in BundleKind]},
                                                   "quantity": {"type": "integer"}})},
        "stripe": ref("StripeState")}),
    "AdminCourseList": _obj({"courses": {"type": "array", "items": ref("AdminCourse")}}),
    "AdminPackage": _obj({
        "code": {"type": "string"}, "title": {"type": "string"},
        "price": _obj({"amount": {"type": "integer"}, "currency": {"type": "string"}}),
        "credits": _obj({"kind": {"enum": ["group", "private"]}, "quantity": {"type": "integer"}}),
        "validity_days": NULLABLE_INT, "stripe_product_id": NULLABLE_STR, "stripe_price_id": NULLABLE_STR,
        "stripe": ref("StripeState")}),
    "AdminPackageList": _obj({"packages": {"type": "array", "items": ref("AdminPackage")}}),
    "SaveChange": {"enum": ["created", "updated", "unchanged"]},
    "CourseChangeSummary": _obj({"steps_changed": {"type": "integer"}, "options_changed": {"type": "integer"},
                                 "enrollments_affected": {"type": "integer"}, "blocked": {"type": "integer"}}),
    "CourseSaved": _obj({"change": ref("SaveChange"), "course": ref("AdminCourse"),
                         "impact": {"oneOf": [{"type": "null"}, ref("CourseChangeSummary")],
                                    "description": "what the change did to existing enrollments; null for a "
                                                   "new course"}}),
    "PackageSaved": _obj({"change": ref("SaveChange"), "package": ref("AdminPackage")}),
    "CourseDryRun": _obj({
        "dry_run": {"const": True}, "code": {"type": "string"},
        "exists": {"type": "boolean", "description": "false: the save would create the course (nothing else "
                                                     "is listed)"},
        "status": {"enum": [*(s.value for s in ProgramStatus), None]},
        "would_apply": {"type": "boolean", "description": "false: the real save would answer 409 (see blocked)"},
        "changes_anything": {"type": "boolean"},
        "summary": ref("CourseChangeSummary"),
        "fields": {"type": "array", "items": _obj({"field": {"enum": ["title", "description", "marketing_copy",
                                                                      "timezone", "price"]},
                                                   "from": {}, "to": {},
                                                   "note": {"type": "string", "description": "present for title "
                                                            "and price of a published course"}},
                                                  ["field", "from", "to"])},
        "steps": {"type": "array", "items": _obj({
            "label": {"type": "string"}, "step_id": NULLABLE_INT,
            "change": {"enum": ["added", "moved", "edited", "removed", "unchanged"]},
            "from_position": NULLABLE_INT, "to_position": NULLABLE_INT,
            "enrollments": {**NULLABLE_INT, "description": "holding enrollments with the step (for added: owed it)"},
            "bookings": NULLABLE_INT,
            "completed_enrollments": {"type": "integer", "description": "added steps: completed enrollments, "
                                                                       "which reopen if they book it"},
            "students": {"type": "array", "items": {"type": "object"},
                         "description": f"the first {MAX_LISTED} students touched, by enrollment id"}},
            ["label", "step_id", "change", "from_position", "to_position", "enrollments", "bookings", "students"])},
        "options": {"type": "array", "items": _obj({
            "class_id": {"type": "string"}, "step": {"type": "string"}, "change": {"enum": ["attached", "detached"]},
            "may_book": {**NULLABLE_INT, "description": "attached: students whose step is unbooked"},
            "active_bookings": {"type": "integer", "description": "detached: bookings holding it (a refusal)"},
            "history_kept": {"type": "integer", "description": "detached: past progress rows naming it"},
            "students": {"type": "array", "items": {"type": "object"}}},
            ["class_id", "step", "change", "students"])},
        "bundle": {"oneOf": [{"type": "null"}, _obj({
            "from": {"type": "string"}, "to": {"type": "string"}, "applies_to": {"const": "new purchases"},
            "enrollments_keeping_theirs": {"type": "integer"}, "records_written": {"type": "integer"}})]},
        "blocked": {"type": "array", "items": _obj({"code": {"const": "step_in_use"}, "field": {"type": "string"},
                                                   "message": {"type": "string"}})},
        "enrollments": {"type": "array", "description": f"the first {MAX_LISTED} affected enrollments, by id",
                        "items": _obj({"enrollment_id": {"type": "integer"}, "student_id": {"type": "string"},
                                       "status": ENROLLMENT_STATUS,
                                       "effects": {"type": "array", "items": {"type": "string"}}})}}),
}
SCHEMAS.update(CATALOG_SCHEMAS)

# --------------------------------------------------------------------------- admin accounts (tasks.admins.accounts)
# As exact as the catalog's: a test sends good and bad bodies to the document and the app.
EMAIL_ADDRESS = {"type": "string", "pattern": r"^\s*(?=[\s\S]{1,320}\s*$)[^@\s]+@[^@\s]+\.[^@\s]+\s*$",
                 "description": "an e-mail address of at most 320 characters once trimmed (kept lower-case)"}
PEOPLE_SCHEMAS: dict[str, dict] = {
    "AdminWrite": _closed({
        "email": EMAIL_ADDRESS,
        "role": {"enum": list(ROLES), "description": "viewer reads; operator also acts; owner also manages admins"},
        "password": {"type": "string", "minLength": MIN_PASSWORD_LENGTH,
                     "description": f"at least {MIN_PASSWORD_LENGTH} characters (stored as an argon2 hash)"},
        "reason": CATALOG_REASON}, required=["email", "role", "password"]),
    "AdminView": _obj({"email": {"type": "string"}, "role": {"enum": list(ROLES)},
                       "created_at": {"type": "string", "format": "date-time"},
                       "last_login_at": {"type": ["string", "null"], "format": "date-time"}}),
    "AdminList": _obj({"admins": {"type": "array", "items": ref("AdminView")}}),
    "TokenWrite": _closed({"name": trimmed(100, least=1)}, required=["name"]),
    "TokenView": _obj({"id": {"type": "integer"}, "name": {"type": "string"},
                       "prefix": {"type": "string", "description": "the token's first characters, to tell it apart"},
                       "created_at": {"type": "string", "format": "date-time"},
                       "last_used_at": {"type": ["string", "null"], "format": "date-time"},
                       "revoked": {"type": "boolean"}}),
}
PEOPLE_SCHEMAS["TokenCreated"] = {**PEOPLE_SCHEMAS["TokenView"], "properties": {
    **PEOPLE_SCHEMAS["TokenView"]["properties"],
    "token": {"type": "string", "description": "the bearer token itself: shown this once, never again"}},
    "required": [*PEOPLE_SCHEMAS["TokenView"]["required"], "token"]}
SCHEMAS.update(PEOPLE_SCHEMAS)

# --------------------------------------------------------------------------- the admin API's other answers
# What each handler answers (ingress/admin_*.py, ingress/health.py, ingress/dashboard.py) from the views of
# tasks.*; `tests.conftest.contract_checked` holds every JSON answer under /admin/ (but the pages) to them.
EVIDENCE_STATUS = [evidence.DRAFT, evidence.SUBMITTING, evidence.SUBMITTED, evidence.FAILED]
REFUND_STATUS = ["pending", "succeeded", "failed"]  # tasks.purchases.manual: AdminRefund.status
MONEY_FIGURES = _obj({
    "sales": {"type": "integer"}, "subtotal": {"type": "integer", "description": "before discounts and exclusive tax"},
    "discount": {"type": "integer"}, "tax": {"type": "integer"}, "total": {"type": "integer",
                                                                         "description": "what was charged"},
    "refunded": {"type": "integer"},
    "net": {"type": "integer", "description": "what was kept (total - refunded) less its share of the tax"}},
    description="minor units of one currency")
REVENUE = _obj({"gross": {"type": "integer"}, "refunded": {"type": "integer"}, "net": {"type": "integer"}},
               description="minor units, in the listing's own currency (sales in another are in "
                           "revenue_by_currency only)")
REVENUE_BY_CURRENCY = {"type": "object", "additionalProperties": MONEY_FIGURES,
                       "description": "per lower-case currency of the sales (\"\" for a sale with none recorded); "
                                      "never summed across currencies"}
ADMIN_SCHEMAS: dict[str, dict] = {
    # GET /healthz, GET /readyz
    "Health": _obj({"status": {"const": "ok"}}),
    "Ready": _obj({"status": {"const": "ready"}}),
    "NotReady": _obj({
        "status": {"const": "unavailable"},
        "error": _obj({"code": {"const": "not_ready"},
                       "message": {"type": "string", "description": "what is unavailable (with the details "
                                                                    "only for a bearer ADMIN_TOKEN)"}}),
        "checks": {"type": "object", "properties": {"database": {"type": "string"}, "broker": {"type": "string"}},
                   "additionalProperties": False,
                   "description": "only for a bearer ADMIN_TOKEN: each failed check with its error"}},
        ["status", "error"]),
    # the catalog's deletes and publishing
    "CatalogDeleted": _obj({"code": {"type": "string"}, "deleted": {"const": True}}),
    "PublishQueued": _obj({
        "kind": {"enum": [publishing.COURSE, publishing.PACKAGE]}, "code": {"type": "string"},
        "publishing": {"const": True},
        "status_url": {"type": "string", "description": "the course or package (`/admin/courses/{code}` or "
                                                        "`/admin/packages/{code}`): its `stripe` object says how "
                                                        "the publish went"}}),
    "DriftList": _obj({"drift": {"type": "array", "items": ref("Drift"),
                                 "description": "the differences not resolved yet, newest first"},
                       "next_before": NEXT_BEFORE}),
    # enrollments (the view is `Enrollment`, as the read API answers it)
    "Provisioned": _obj({
        "progress_created": {"type": "integer", "description": "progress rows created: steps the enrollment lacked"},
        "step_ids": {"type": "array", "items": {"type": "integer"}, "description": "the steps of those rows"},
        "credits_granted": {"type": "object", "propertyNames": {"enum": [t.value for t in CreditType]},
                            "additionalProperties": {"type": "integer"},
                            "description": "bundle credits granted now, by kind (only the kinds granted)"}},
        description="what was created; nothing that existed is created twice"),
    "Refulfilled": _obj({"refulfilled": {"const": True}, "created": ref("Provisioned"),
                         "enrollment": ref("Enrollment")}),
    "EnrolledByHand": _obj({"enrollment": ref("Enrollment"), "created": ref("Provisioned")}),
    "EnrollmentMoved": _obj({"enrollment": ref("Enrollment", "the enrollment as it now stands")}),
    "RefundPreview": _obj({
        "preview": {"const": True}, "enrollment_id": {"type": "integer"},
        "amount": {"type": "integer", "description": "minor units: what the refund would take back"},
        "currency": NULLABLE_STR,
        "refundable": {"type": "integer", "description": "minor units left to refund, less the refunds still "
                                                         "pending"},
        "keep_access": {"type": "boolean"},
        "enrollment_status": _obj({"from": {"enum": [s.value for s in EnrollmentStatus]},
                                   "to": {"enum": [s.value for s in EnrollmentStatus]}}),
        "credits": {"type": "array", "description": "the ledger entries the refund would write", "items": _obj({
            "kind": {"enum": [t.value for t in CreditType]}, "quantity": {"type": "integer"},
            "entry_type": {"enum": [t.value for t in LedgerEntryType]},
            "lot": {**NULLABLE_INT, "description": "the grant the entry draws on; null for a grant"}})},
        "steps": {"type": "array", "description": "the progress rows whose status would change", "items": _obj({
            "progress_id": {"type": "integer"}, "label": {"type": "string"},
            "from": {"enum": [s.value for s in ProgressStatus]}, "to": {"enum": [s.value for s in ProgressStatus]},
            "booking_id": NULLABLE_STR})},
        "bookings": {"type": "array", "description": "a revocation: the active bookings the platform is told to "
                                                     "cancel (empty otherwise)",
                     "items": _obj({"booking_id": {"type": "string"}, "change": {"type": "string"}})}}),
    "AdminRefund": _obj({
        "id": {"type": "integer"}, "enrollment_id": {"type": "integer"},
        "amount": {"type": "integer", "description": "minor units"}, "currency": NULLABLE_STR,
        "keep_access": {"type": "boolean"}, "reason": {"type": "string"},
        "actor": {"type": "string", "description": "the admin who asked (an e-mail, or ADMIN_TOKEN)"},
        "status": {"enum": REFUND_STATUS, "description": "pending: the outcome is unknown (send the same request "
                                                         "with the same Idempotency-Key)"},
        "stripe_refund_id": NULLABLE_STR, "last_error": NULLABLE_STR}),
    "Refunded": _obj({"refund": ref("AdminRefund", "the admin refund, `succeeded`"),
                      "enrollment": ref("Enrollment", "the enrollment after the refund was applied")}),
    "RefundNotMade": {"allOf": [ref("Error"), _obj({"refund": ref("AdminRefund", "`failed` (402) or `pending` "
                                                                                "(502)")})]},
    "CreditsAdjusted": _obj({
        "student_id": {"type": "string"},
        "entries": {"type": "array", "description": "the ledger entries the adjustment made, in order", "items": _obj({
            "id": {"type": "integer"}, "kind": {"enum": [t.value for t in CreditType]},
            "entry_type": {"enum": [t.value for t in LedgerEntryType],
                           "description": "grant (added) or revoke (taken, from the soonest-expiring lots)"},
            "quantity": {"type": "integer", "description": "+ adds to the balance, - takes from it"},
            "cause": {"type": "string", "description": "`adjustment:<audit entry id>`"},
            "expires_at": {**NULLABLE_STR, "format": "date-time"}})},
        "balances": {**CREDIT_BALANCES, "description": "the student's usable balances after it"}}),
    # the inbox
    "InboxEvent": _obj({
        "id": {"type": "integer"}, "source": {"enum": [s.value for s in InboxSource]},
        "event_id": {"type": "string", "description": "the sender's id of the event"}, "type": {"type": "string"},
        "subject": {**NULLABLE_STR, "description": "what the event is about (events on one subject run in order)"},
        "status": {"enum": [s.value for s in InboxStatus]}, "received_at": DATETIME,
        "processed_at": {**NULLABLE_STR, "format": "date-time"}, "attempts": {"type": "integer"},
        "last_error": NULLABLE_STR,
        "waiting_for": {**NULLABLE_STR,
                        "description": "a waiting event: what it waits for (`payment:pi_…`, `booking:…`)"},
        "payload_pruned": {"type": "boolean", "description": "its raw payload was pruned (RETENTION_DAYS or the "
                                                             "student's erasure): it cannot be replayed"}}),
    "InboxEventList": _obj({"events": {"type": "array", "items": ref("InboxEvent"), "description": "newest first"},
                            "next_before": NEXT_BEFORE}),
    "Replayed": _obj({"replayed": {"const": True}, "event": ref("InboxEvent", "the event, back to pending")}),
    # the course report (`?format=csv` answers text/csv)
    "CourseReport": _obj({
        "generated_at": DATETIME,
        "courses": {"type": "array", "description": "every live course, drafts included, by code", "items": _obj({
            "course_code": {"type": "string"}, "title": {"type": "string"},
            "status": {"enum": [s.value for s in ProgramStatus]}, "currency": {"type": "string"},
            "enrollments": _obj({s.value: {"type": "integer"} for s in EnrollmentStatus},
                                description="enrollments by status, zeros included"),
            "enrollments_total": {"type": "integer"},
            "paid": {"type": "integer", "description": "enrollments whose payment settled (active, suspended, "
                                                       "completed, revoked)"},
            "completion_rate": {"type": "number", "description": "completed / paid, 4 places (0 with none paid)"},
            "revenue": REVENUE, "revenue_by_currency": REVENUE_BY_CURRENCY,
            "steps": {"type": "array", "items": _obj({
                "course_step_id": {"type": "integer"}, "label": {"type": "string"}, "position": {"type": "integer"},
                "title": NULLABLE_STR,
                "booked": {"type": "integer", "description": "enrollments whose step is booked, completed or missed "
                                                           "now (a revocation's cancelled steps leave it)"},
                "completed": {"type": "integer"}, "missed": {"type": "integer"},
                "skipped_ahead": {"type": "integer", "description": "bookings made while an earlier step was "
                                                                    "unbooked"}})},
            "skipped_ahead": {"type": "integer", "description": "the steps' skipped_ahead, summed"}})},
        "packages": {"type": "array", "description": "every live credit package, by code", "items": _obj({
            "package_code": {"type": "string"}, "title": {"type": "string"}, "currency": {"type": "string"},
            "credit_type": {"enum": [t.value for t in CreditType]}, "quantity": {"type": "integer"},
            "purchases": _obj({s.value: {"type": "integer"} for s in PurchaseStatus},
                              description="purchases by status, zeros included"),
            "purchases_total": {"type": "integer"},
            "paid": {"type": "integer", "description": "purchases paid or refunded"},
            "revenue": REVENUE, "revenue_by_currency": REVENUE_BY_CURRENCY})}}),
    # dispute evidence
    "DisputeEvidence": _obj({
        "dispute_id": {"type": "string", "description": "Stripe's (`dp_…`)"},
        "status": {"enum": [s.value for s in DisputeStatus]},
        "stripe_status": {**NULLABLE_STR, "description": "Stripe's own word (needs_response, …)"},
        "amount": {**NULLABLE_INT, "description": "minor units"}, "currency": NULLABLE_STR,
        "reason": NULLABLE_STR, "enrollment_id": {**NULLABLE_INT, "description": "null: a package purchase's"},
        "payment_intent": NULLABLE_STR, "evidence_due_by": {**NULLABLE_STR, "format": "date-time"},
        "evidence_status": {"enum": EVIDENCE_STATUS,
                            "description": "failed: the last submission did not reach Stripe or was refused "
                                           "(submit again)"},
        "evidence": {"type": "object", "properties": {name: {"type": "string"} for name in evidence.FIELDS},
                     "additionalProperties": False,
                     "description": "Stripe's evidence fields: a fresh draft until submitted, then what was sent"},
        "files": {"type": "object", "additionalProperties": {"type": "string"},
                  "description": "evidence field -> the id of the Stripe file uploaded for it"},
        "submitted_at": {**NULLABLE_STR, "format": "date-time"},
        "error": {**NULLABLE_STR, "description": "why the last submission failed"}}),
    "EvidenceNotSubmitted": {"allOf": [ref("Error"), _obj({"evidence": ref("DisputeEvidence")})]},
    # admin accounts, tokens and the audit log
    "Me": _obj({"actor": {"type": "string", "description": "the admin's e-mail, or ADMIN_TOKEN"},
                "role": {"enum": list(ROLES)},
                "tokens": {"type": "array", "items": ref("TokenView"),
                           "description": "the admin's personal tokens (none for ADMIN_TOKEN)"}}),
    "AdminRemoved": _obj({"email": {"type": "string"}, "removed": {"const": True}}),
    "AuditEntry": _obj({
        "id": {"type": "integer"}, "at": DATETIME,
        "actor": {"type": "string", "description": "an admin's e-mail, ADMIN_TOKEN, or `cli:<user>`"},
        "role": {"enum": list(ROLES)},
        "action": {"type": "string", "description": "e.g. enrollment.refund, event.replay"},
        "target": {**NULLABLE_STR, "description": "what it was done to (`enrollment:12`, …)"},
        "reason": NULLABLE_STR,
        "details": {"type": "object", "description": "what the action recorded besides (its own fields)"}}),
    "AuditLog": _obj({"entries": {"type": "array", "items": ref("AuditEntry"), "description": "newest first"},
                      "next_before": NEXT_BEFORE}),
}
SCHEMAS.update(ADMIN_SCHEMAS)

def _model_schema(model, name: str, schemas: dict) -> dict:
    schema = model.model_json_schema(ref_template=REF)
    for def_name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(def_name, definition)
    schema["title"] = name
    return schema


def event_schemas() -> dict[str, dict]:
    """PlatformEvent.<type> (inbound envelope with its data) and OutboundEvent.<type> (outbound envelope)."""
    schemas: dict[str, dict] = {}
    for type_, model in PLATFORM_DATA.items():
        schemas[f"PlatformEventData.{type_}"] = _model_schema(model, f"PlatformEventData.{type_}", schemas)
        schemas[f"PlatformEvent.{type_}"] = _obj({
            "id": {"type": "string", "minLength": 1, "maxLength": 64, "description": "unique per event"},
            "type": {"const": type_},
            "occurred_at": {**DATETIME, "description": "ISO 8601 with an offset; one later than the event's arrival is taken as its arrival"},
            "data": ref(f"PlatformEventData.{type_}")})
    schemas["PlatformEvent"] = {"oneOf": [ref(f"PlatformEvent.{t}") for t in PLATFORM_DATA]}
    for type_, model in OUTBOUND_DATA.items():
        schemas[f"OutboundEventData.{type_}"] = _model_schema(model, f"OutboundEventData.{type_}", schemas)
        schemas[f"OutboundEvent.{type_}"] = _obj({
            "id": {"type": "string", "pattern": "^cp_out_[0-9a-f]{32}$",
                   "description": "globally unique; the same on every delivery (dedupe on it)"},
            "type": {"const": type_},
            "created_at": DATETIME,
            "occurred_at": {**DATETIME, "description": "the same as created_at"},
            "sequence": {"type": "integer", "minimum": 1,
                         "description": "strictly increasing per enrollment (1 for an event about none)"},
            "data": ref(f"OutboundEventData.{type_}")})
    schemas["OutboundEvent"] = {"oneOf": [ref(f"OutboundEvent.{t}") for t in OUTBOUND_DATA]}
    return schemas


def _json(schema: str, description: str = "OK") -> dict:
    return {"description": description, "content": {JSON: {"schema": ref(schema)}}}


ERRORS = {"400": _json("Error", "bad input (the error code says which)"),
          "401": _json("Error", "no valid bearer token"),
          "403": _json("Error", "a read token on a route it does not open, or a personal token below the "
                                "route's role"),
          # ingress/limits.py: too many refused authentications from one address in a minute
          "429": _json("Error", "rate_limited: too many failed authentications from this address")}
READ = [{"bearer": []}]
ADMIN = [{"bearer": []}]
HTML = {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}
REDIRECT = {"description": "a redirect (to the login page, or back after the action)"}


RETRY_DEAD = ("Body, every field optional: `channel` (`mail` or `platform`), `after` (the last id a previous call "
              "retried), `reason` (for the audit log). Makes up to 10,000 dead messages with an id past `after` due now "
              "with a fresh attempt count, oldest first. `remaining` counts the dead ones after the last id retried: "
              "while it is above 0, call again with that id as `after`. A mail that ended `expired` (held up past "
              "its `expires_at`) is not dead and is never retried; neither is a dead message whose body is gone (pruned by "
              "retention, or held back by a student's erasure): there is nothing left to send.")


def op(summary: str, *, tag: str, ok: dict, security=None, status: str = "200",
       body: str | None = None, query: list[dict] | None = None, headers: list[dict] | None = None,
       extra: dict | None = None, description: str | None = None) -> dict:
    """One operation; `ok` is its success answer, always given (an integrator builds on the document alone)."""
    operation: dict[str, Any] = {"summary": summary, "tags": [tag],
                                 "responses": {status: ok, **(extra or {})}}
    if description:
        operation["description"] = description
    if security is not None:
        operation["security"] = security
        operation["responses"].update({k: v for k, v in ERRORS.items() if k not in operation["responses"]})
    else:
        operation["security"] = []
        operation["responses"].setdefault("403", _json("Error", "a read token is refused here (send none)"))
    if body:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": ref(body)}}}
    if query or headers:
        operation["parameters"] = (query or []) + (headers or [])
    return operation


def q(name: str, description: str, *, required: bool = False, schema: dict | None = None) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def paged(default: int) -> list[dict]:
    """`limit` and `before` of a newest-first admin list (`ingress.paging`)."""
    return [q("limit", f"how many, 1 to {paging.MAX_LIMIT} (default {default})",
              schema={"type": "integer", "minimum": 1, "maximum": paging.MAX_LIMIT}),
            q("before", "the `next_before` of the previous page: only older rows (a 400 `invalid_before` "
                        "unless a positive integer of at most 18 digits)",
              schema={"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999})]


def h(name: str, description: str, *, required: bool = False, max_length: int | None = None) -> dict:
    """A request header the operation reads."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {"name": name, "in": "header", "required": required, "description": description, "schema": schema}


SIGNATURE_HEADERS = [
    h("Platform-Signature", "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\" with "
                            "PLATFORM_WEBHOOK_SECRET>`, 5 minutes' tolerance (or send the three Standard Webhooks "
                            "headers instead)"),
    h("webhook-id", "Standard Webhooks: the event's id"),
    h("webhook-timestamp", "Standard Webhooks: unix seconds, 5 minutes' tolerance"),
    h("webhook-signature", "Standard Webhooks: `v1,<base64 HMAC-SHA256 of \"<id>.<timestamp>.<raw body>\">` "
                           "with the secret's bytes"),
]


NOT_FOUND = {"404": _json("Error", "not found, or not on sale")}
PUBLISH_REFUSED = {"503": _json("Error", "publishing_disabled (STRIPE_API_KEY is not set) or queue_unavailable "
                                         "(the publish could not be queued; try again)")}
NO_ACCOUNT = {"409": _json("Error", "no_account: the break-glass ADMIN_TOKEN has no account (personal tokens are "
                                    "an admin's own)")}
COURSE_CHANGE = (
    "The body is the whole course; steps keep their identity by label, options by class id. A published course "
    "accepts step reordering, new steps, option attach/detach and bundle changes. What a saved change does to "
    "the enrollments the course already has:\n\n"
    "- reordering: progress rows and bookings follow the step by id, not position; nothing of a student's "
    "progress or bookings changes, only the order (and the skipped-ahead flag of later bookings);\n"
    "- a new step: every active or suspended enrollment gets it, unbooked, with the change; a completed one "
    "stays completed and reopens if it books the step;\n"
    "- removing a step any enrollment holds (a progress row) or any booking names: refused, 409 step_in_use;\n"
    "- attaching a class: students whose progress of that step is unbooked may book it at once;\n"
    "- detaching a class an active booking of that step holds: refused, 409 step_in_use; past bookings and "
    "completed progress keep their record;\n"
    "- the bundle: new purchases only; every enrollment keeps the bundle recorded at its purchase;\n"
    "- title and price: new purchases, once published again.\n\n"
    "`?dry_run=true` answers the same checks without saving: `would_apply` (false when the real save would "
    "answer 409), `blocked` (each refusal with its message), `fields`, `steps` (per step: change "
    "added/moved/edited/removed/unchanged, positions, how many enrollments hold it and the students), "
    "`options` (attached: who may book it; detached: the active bookings), `bundle` (from, to, how many "
    "enrollments keep theirs) and `enrollments` (each affected enrollment with its effects in words). "
    "A bad body is the same 400 as without dry_run. A dry run writes no audit entry; the real save records "
    "`course.save` with the counts.\n\n"
    "The body (`CourseWrite`) is checked whole before anything is read or written; an unknown field is refused "
    "(400 naming it). What `GET /admin/courses/{code}` answers may be sent back as it is: `status`, "
    "`published`, `published_at`, `stripe` and each step's `id` are set by the service and ignored here. "
    "Beyond what the schema says, the code refuses a timezone the tz database does not know, a currency "
    "outside ISO 4217, a label or class id given twice in the course, a `position` other than the step's "
    "place, and a `code` other than the path's.")
PACKAGE_WRITE = (
    "The body (`PackageWrite`) is the whole package; an unknown field is refused (400 naming it). `credits` is "
    "one `{\"kind\", \"quantity\"}` object (a package grants one kind of credit), the shape "
    "`GET /admin/packages/{code}` answers; a list (the shape of `GET /v1/packages`) is a 400 naming `credits`. "
    "What `GET /admin/packages/{code}` answers may be sent back as it is: `stripe_product_id` and `stripe` are "
    "set by publishing and ignored here. A change reaches new purchases once published; credits already "
    "granted keep their quantity and expiry.")
CONDITIONAL_WRITE = (
    "\n\nSafe read-modify-write: GET answers an `ETag`, a strong validator of the course or package as it stands "
    "(a digest of the admin view: every save that changes something changes it, and so does publishing, each "
    "Stripe call's outcome and drift found; a save that changes nothing keeps it). Send it back as `If-Match`: "
    "when the course or package has changed since (another save, a publish), the PUT answers 412 "
    "`precondition_failed` and changes nothing; GET it again, reapply the change and PUT with the new ETag. "
    "The check is made under the row's lock in the save's own transaction (the lock every save and delete takes, "
    "and publishing before it sets the status or the Stripe ids), so nothing comes between it and the write. "
    "`If-Match: *` requires that it exists (412 when it does not: nothing is created); `If-None-Match: *` "
    "creates only (412 when it exists); If-None-Match with entity tags refuses when the current one is among "
    "them. Without these headers a PUT is unconditional. A successful PUT answers the `ETag` of "
    "what it saved (the one GET now answers).")
# response header of the admin catalog's GET and PUT of one course or package
ETAG = {"ETag": {"description": "the entity tag of the course or package as it now stands (quoted); send it as "
                                "If-Match with the next PUT", "schema": {"type": "string"}}}
CONDITIONS = [
    h("If-Match", "`*`, or one or more entity tags as GET's `ETag` answered them (strong comparison: a weak "
                  "`W/` tag never matches): save only if the course or package still has one of them (`*`: "
                  "exists); else 412 precondition_failed, nothing changed. Absent: unconditional"),
    h("If-None-Match", "`*`: create only, 412 when it exists; entity tags: 412 when the current one is among "
                       "them. Absent: unconditional"),
]
READ_CONDITIONS = [
    h("If-None-Match", "entity tags as `ETag` answered them (weak comparison), or `*`: when the course or package "
                       "still has one of them, 304 Not Modified with the `ETag` and no body (the copy held is "
                       "current). Absent: the view"),
    h("If-Match", "entity tags (strong comparison) or `*`: when the course or package has none of them, 412 "
                  "precondition_failed. Absent: the view"),
]
NOT_MODIFIED = {"304": {"description": "not modified: If-None-Match names the current ETag (no body)",
                        "headers": ETAG}}
DELETE_CONDITIONS = [
    h("If-Match", "`*`, or entity tags as GET's `ETag` answered them (strong comparison): delete only if the "
                  "course or package still has one of them; else 412 precondition_failed, nothing deleted. "
                  "Absent: unconditional"),
    h("If-None-Match", "entity tags: 412 when the current one is among them (`*`: always 412, it exists). "
                       "Absent: unconditional"),
]
PUBLISH_CONDITIONS = [
    h("If-Match", "`*`, or entity tags as GET's `ETag` answered them (strong comparison): queue the publish only "
                  "if the course or package still has one of them when it is asked for (a save after that, before "
                  "the worker runs, is published with it); else 412 precondition_failed, nothing queued. Absent: "
                  "unconditional"),
    h("If-None-Match", "entity tags: 412 when the current one is among them. Absent: unconditional"),
]
PRECONDITION_FAILED = {"412": _json("Error", "precondition_failed: If-Match names an ETag the course or package no "
                                             "longer has (a save or a publish came between), or it does not exist; "
                                             "or If-None-Match holds (it exists). Nothing changed")}


def tagged(response: dict) -> dict:
    """A response that carries the ETag header."""
    return {**response, "headers": ETAG}


# the timeline's filter: repeat `kind` for several (tasks.reporting.timeline.KINDS)
TIMELINE_KIND = {"name": "kind", "in": "query", "required": False, "style": "form", "explode": True,
                 "description": "only rows of these kinds (repeatable); none: every row",
                 "schema": {"type": "array", "items": {"enum": list(TIMELINE_KINDS)}}}
SIGNED = {"400": _json("Error", "bad signature, stale timestamp, bad JSON or a bad event: nothing stored"),
          "408": _json("Error", "request_timeout: the body stalled or ended before its length; nothing stored, "
                                "send it again"),
          "413": _json("Error", "body over 256 KiB")}

# (method, OpenAPI path) → operation; every Flask route must be here and nothing else
OPERATIONS: dict[tuple[str, str], dict] = {
    ("GET", "/openapi.json"): op("This document", tag="meta", ok={"description": "OpenAPI 3.1",
                                                                  "content": {JSON: {"schema": {"type": "object"}}}}),
    ("GET", "/healthz"): op("The process is up", tag="meta", ok=_json("Health")),
    ("GET", "/readyz"): op("Database and broker reachable (503 when not)", tag="meta", ok=_json("Ready"),
                           extra={"503": _json("NotReady", "not ready: the database (unreachable or not at the "
                                                           "migration head) or the broker")}),
    ("GET", "/metrics"): op("Prometheus metrics (text format)", tag="meta",
                            ok={"description": "text/plain exposition", "content": {"text/plain": {
                                "schema": {"type": "string"}}}}),
    ("GET", "/static/{filename}"): op("Static files of the dashboard", tag="meta", ok={"description": "a file"},
                                      extra=NOT_FOUND),
    ("POST", "/webhooks/stripe"): op("Stripe events (Stripe-Signature)", tag="webhooks", ok=_json("Received"),
                                     extra=SIGNED, headers=[h("Stripe-Signature", "Stripe's signature of the raw body "
                                                            "(STRIPE_WEBHOOK_SECRET), 5 minutes' tolerance",
                                                            required=True)]),
    ("POST", "/webhooks/platform"): op(
        "Platform events, signed with Platform-Signature or Standard Webhooks headers", tag="webhooks",
        ok=_json("Received"), body="PlatformEvent", headers=SIGNATURE_HEADERS,
        extra={**SIGNED, "400": _json("Error", "invalid_signature, invalid_json, invalid_event or "
                                               "unknown_event_type: nothing stored")}),
    ("GET", "/v1/courses"): op("Published courses with their price", tag="read", security=READ,
                               ok=_json("CourseList")),
    ("GET", "/v1/courses/{code}"): op("One published course: steps in order with their options", tag="read",
                                      security=READ, ok=_json("Course"), extra=NOT_FOUND),
    ("GET", "/v1/packages"): op("Credit packages on sale", tag="selling", security=READ, ok=_json("PackageList")),
    ("GET", "/v1/packages/{code}"): op("One credit package on sale", tag="selling", security=READ,
                                       ok=_json("Package"), extra=NOT_FOUND),
    ("POST", "/v1/checkout-sessions"): op(
        "Create a Stripe Checkout Session for a student (optional Idempotency-Key header)", tag="selling",
        security=READ, status="201", ok=_json("CheckoutCreated", "created"), body="CheckoutRequest",
        headers=[h("Idempotency-Key", "the same key with the same body answers the same session; with another "
                                      "body, within 24 hours, 409 idempotency_key_reused", max_length=255)],
        extra={**NOT_FOUND, "409": _json("Error", "already_enrolled: the student holds the course; or "
                                                  "idempotency_key_reused: the key came with another body"),
               "502": _json("Error", "stripe_error"), "503": _json("Error", "stripe_not_configured")}),
    ("GET", "/v1/checkout-sessions/{checkout_session_id}"): op(
        "A session's state on the buyer's return; fulfils a paid one first", tag="selling", security=READ,
        ok=_json("CheckoutState"), extra={**NOT_FOUND, "502": _json("Error", "stripe_error"),
                                          "503": _json("Error", "stripe_not_configured")}),
    ("GET", "/v1/students/{student_id}/courses"): op("A student's enrollments with step progress", tag="read",
                                                     security=READ, ok=_json("StudentCourses")),
    ("GET", "/v1/students/{student_id}/credits"): op("A student's credit balances", tag="read", security=READ,
                                                     ok=_json("Credits")),
    ("GET", "/v1/students/{student_id}/steps/{course_step_id}/eligibility"): op(
        "May the student book this step (optionally this class)?", tag="read", security=READ,
        ok=_json("Eligibility"), query=[q("class_id", "the class the student would book")]),
    ("GET", "/v1/calendar"): op("Mirrored classes in a window, tagged with course steps", tag="read", security=READ,
                                ok=_json("Calendar"),
                                query=[q("from", "ISO 8601", required=True, schema=DATETIME),
                                       q("to", "ISO 8601, after from", required=True, schema=DATETIME)],
                                extra={"400": _json("Error", "invalid_parameter: a bad or too wide window")}),
    ("GET", "/v1/events"): op(
        "Every outbound platform event in the order written (catch up after an outage)", tag="events",
        security=READ, ok=_json("EventFeed"),
        query=[q("after", "the `next` cursor of the previous page; absent: from the start"),
               q("limit", "1 to 1000 (default 100)", schema={"type": "integer", "minimum": 1, "maximum": 1000})]),
    ("GET", "/admin/courses"): op("Courses, drafts included", tag="admin", security=ADMIN,
                                  ok=_json("AdminCourseList")),
    ("PUT", "/admin/courses/{code}"): op(
        "Create or replace a course (dry_run=true: who the change would affect; nothing changes)", tag="admin",
        security=ADMIN, body="CourseWrite",
        description=COURSE_CHANGE + CONDITIONAL_WRITE + " With `?dry_run=true` the same conditions are checked: a "
                    "what-if of a stale view is refused alike.",
        query=[q("dry_run", "true or 1: answer the what-if (200 CourseDryRun) and change nothing; false, 0 or "
                            "absent: save", schema={"type": "string", "enum": ["true", "false", "1", "0"]})],
        headers=CONDITIONS,
        ok={"description": "updated or unchanged (CourseSaved, with the saved course's ETag); with dry_run, the "
                           "what-if (CourseDryRun, no ETag)",
            "headers": ETAG,
            "content": {JSON: {"schema": {"oneOf": [ref("CourseSaved"), ref("CourseDryRun")]}}}},
        extra={"201": tagged(_json("CourseSaved", "created")), **PRECONDITION_FAILED,
               "400": _json("Error", "validation_failed: the first bad field, named in `error.field` (a dotted "
                                     "path such as `steps[1].label`); nothing changed"),
               "409": _json("Error", "step_in_use: the change would remove a step enrollments hold or detach "
                                     "a class with an active booking; nothing changed (the dry run lists it "
                                     "under `blocked`)")}),
    ("GET", "/admin/courses/{code}"): op("One course (admin view): PUT it back unchanged and nothing changes",
                                         tag="admin", security=ADMIN, ok=tagged(_json("AdminCourse")),
                                         headers=READ_CONDITIONS,
                                         extra={**NOT_FOUND, **NOT_MODIFIED, **PRECONDITION_FAILED}),
    ("DELETE", "/admin/courses/{code}"): op(
        "Soft-delete a course", tag="admin", security=ADMIN, ok=_json("CatalogDeleted"),
        headers=DELETE_CONDITIONS, extra={**NOT_FOUND, **PRECONDITION_FAILED},
        description="The course leaves the catalog and the read API; its enrollments, its Stripe product and price "
                    "stay. A checkout opened for it still buys it when paid, even after a new course is made under "
                    "the same code (the session's `metadata.coursepipe_course_id` names the course sold)."),
    ("POST", "/admin/courses/{code}/publish"): op("Publish a course to Stripe (queued)", tag="admin", security=ADMIN,
                                                  status="202", ok=_json("PublishQueued", "queued"),
                                                  headers=PUBLISH_CONDITIONS,
                                                  extra={**NOT_FOUND, **PUBLISH_REFUSED, **PRECONDITION_FAILED}),
    ("GET", "/admin/packages"): op("Credit packages", tag="admin", security=ADMIN, ok=_json("AdminPackageList")),
    ("PUT", "/admin/packages/{code}"): op(
        "Create or replace a credit package", tag="admin", security=ADMIN, body="PackageWrite",
        description=PACKAGE_WRITE + " `stripe_price_id` (optional) links a price made by hand in Stripe; null "
                    "unlinks it. A price sells one course or package: one that another course or package "
                    "holds is refused, a deleted one's included (a deleted course or package keeps its Stripe "
                    "price, so a checkout opened with it before the delete still buys what it was sold as). A "
                    "package made again under a deleted one's code leaves `stripe_price_id` out and is published "
                    "with a price of its own." + CONDITIONAL_WRITE,
        headers=CONDITIONS, ok=tagged(_json("PackageSaved", "updated or unchanged")),
        extra={"201": tagged(_json("PackageSaved", "created")), **PRECONDITION_FAILED,
               "400": _json("Error", "validation_failed: the first bad field, named in `error.field` (e.g. "
                                     "`credits.kind`); nothing changed"),
               "409": _json("Error", "price_in_use: stripe_price_id is the price of another course or package "
                                     "(named in the message, with '(deleted …)' when it is deleted); nothing "
                                     "changed")}),
    ("GET", "/admin/packages/{code}"): op("One credit package: PUT it back unchanged and nothing changes",
                                          tag="admin", security=ADMIN, ok=tagged(_json("AdminPackage")),
                                          headers=READ_CONDITIONS,
                                          extra={**NOT_FOUND, **NOT_MODIFIED, **PRECONDITION_FAILED}),
    ("DELETE", "/admin/packages/{code}"): op(
        "Soft-delete a credit package", tag="admin", security=ADMIN, ok=_json("CatalogDeleted"),
        headers=DELETE_CONDITIONS, extra={**NOT_FOUND, **PRECONDITION_FAILED},
        description="The package leaves the catalog; its purchases, its Stripe product and price stay (the price "
                    "cannot be linked to another package: 409 price_in_use). A checkout opened for it still buys "
                    "it when paid, even after a new package is made under the same code."),
    ("POST", "/admin/packages/{code}/publish"): op("Publish a package to Stripe (queued)", tag="admin",
                                                   security=ADMIN, status="202", ok=_json("PublishQueued", "queued"),
                                                   headers=PUBLISH_CONDITIONS,
                                                   extra={**NOT_FOUND, **PUBLISH_REFUSED, **PRECONDITION_FAILED}),
    ("GET", "/admin/stripe/drift"): op("Differences between Stripe and the catalog", tag="admin", security=ADMIN,
                                       ok=_json("DriftList"), query=paged(100),
                                       description="Newest first, a page at a time."),
    ("POST", "/admin/enrollments/{enrollment_id}/refulfill"): op("Re-fulfil an enrollment", tag="admin",
                                                                 security=ADMIN, ok=_json("Refulfilled"),
                                                                 extra={"409": _json("Error", "not_fulfillable: the "
                                                                                     "enrollment is owed nothing "
                                                                                     "(pending, failed or revoked)")}),
    ("GET", "/admin/events"): op("Inbox events", tag="admin", security=ADMIN, ok=_json("InboxEventList"),
                                 description="Newest first. Each event: `id`, `source`, `event_id`, `type`, "
                                             "`subject`, `status`, `received_at`, `processed_at`, `attempts`, "
                                             "`last_error`, `waiting_for`, and `payload_pruned` (its raw payload "
                                             "was pruned by retention or an erasure: not replayable).",
                                 query=[q("status", "inbox status"), *paged(50)]),
    ("POST", "/admin/events/{inbox_id}/replay"): op(
        "Replay an inbox event (queued)", tag="admin", security=ADMIN, status="202", ok=_json("Replayed", "queued"),
        description="Puts a failed, waiting or ignored event back to pending and queues it. An event's raw payload "
                    "is pruned once it is older than RETENTION_DAYS (processed, ignored and failed ones alike) or "
                    "when its student is erased; such an event (`payload_pruned: true` in `GET /admin/events`) "
                    "has nothing left to run and is refused, changing nothing.",
        extra={**NOT_FOUND, "409": _json("Error", "already_processed, or payload_pruned: its payload was pruned "
                                                  "(RETENTION_DAYS or the student's erasure)")}),
    ("POST", "/admin/outbox/retry-dead"): op("Dead outbox messages due again, 10,000 a call", tag="admin", security=ADMIN,
                                             ok=_json("RetriedDead"), description=RETRY_DEAD),
    ("GET", "/admin/reports/courses"): op("Per course: enrollments by status, completion, revenue", tag="admin",
                                          security=ADMIN, query=[q("format", "json (default) or csv")],
                                          ok={"description": "the report: JSON, or with `format=csv` one row per "
                                                             "course and step",
                                              "content": {JSON: {"schema": ref("CourseReport")},
                                                          "text/csv": {"schema": {"type": "string"}}}}),
    ("GET", "/admin/"): op("The ops dashboard (login form session)", tag="dashboard", ok=HTML,
                           extra={"302": REDIRECT}),
    ("GET", "/admin/login"): op("Dashboard login form", tag="dashboard", ok=HTML),
    ("POST", "/admin/login"): op(
        "Log in: an admin account's e-mail and password (ADMIN_TOKEN as the owner's password, e-mail empty)",
        tag="dashboard", ok=HTML, status="302", extra={"401": HTML, "403": _json("Error", "csrf_failed")}),
    ("POST", "/admin/logout"): op("Log out", tag="dashboard", ok=REDIRECT, status="302"),
    ("GET", "/admin/ui/events/{inbox_id}"): op("One inbox event, its enrollment and its subject's other events (page)",
                                               tag="dashboard", ok=HTML),
    ("POST", "/admin/ui/events/{inbox_id}/replay"): op("Replay (form)", tag="dashboard", ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/events/replay-failed"): op("Replay every failed event (form)", tag="dashboard", ok=REDIRECT,
                                                   status="302"),
    ("GET", "/admin/ui/enrollments/{enrollment_id}"): op(
        "One enrollment: its events and its timeline (page)", tag="dashboard", ok=HTML, query=[TIMELINE_KIND],
        extra={"400": _json("Error", "validation_failed: an unknown kind")}),
    ("POST", "/admin/ui/enrollments/{enrollment_id}/refulfill"): op("Re-fulfil (form)", tag="dashboard",
                                                                    ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/outbox/{message_id}/retry"): op("Retry an outbox message (form)", tag="dashboard",
                                                        ok=REDIRECT, status="302"),
    ("GET", "/admin/ui/reports"): op(
        "Course and package reports, and the weekly chart of enrollments and completions (page)", tag="dashboard",
        ok=HTML, query=[q("weeks", "how many weeks the chart shows, 1 to 104 (default 12)",
                          schema={"type": "integer", "minimum": 1, "maximum": 104})],
        extra={"400": _json("Error", "validation_failed: weeks out of range")}),
    ("GET", "/admin/disputes/{dispute_id}/evidence"): op(
        "The evidence drafted for a dispute (service date, access log, customer communication, receipt, summary)",
        tag="admin", security=ADMIN, ok=_json("DisputeEvidence"), extra=NOT_FOUND),
    ("POST", "/admin/disputes/{dispute_id}/evidence/submit"): op(
        "Submit the drafted evidence to Stripe (intent -> call -> outcome)", tag="admin", security=ADMIN,
        ok=_json("DisputeEvidence", "submitted: the evidence as sent"),
        extra={**NOT_FOUND, "409": _json("Error", "dispute_closed: the dispute is closed; or submission_in_progress: "
                                                  "another submission began less than 5 minutes ago"),
               "503": _json("Error", "stripe_not_configured: STRIPE_API_KEY is not set"),
               "502": _json("EvidenceNotSubmitted", "stripe_refused: Stripe refused the submission (the "
                                                    "evidence, `failed`; fix what it names and submit again); or "
                                                    "stripe_unavailable: Stripe could not be reached or answered "
                                                    "5xx or 409 (`failed`, its outcome unknown): submit again, it "
                                                    "reads the dispute first and sends nothing twice")}),
    ("GET", "/admin/ui/disputes/{dispute_id}"): op("One dispute and its evidence (page)", tag="dashboard", ok=HTML),
    ("POST", "/admin/ui/disputes/{dispute_id}/submit"): op("Submit the evidence (form)", tag="dashboard",
                                                           ok=REDIRECT, status="302"),
    # admin accounts, roles and the audit log (viewer reads; operator acts; owner manages admins)
    ("GET", "/admin/me"): op("Who the bearer is, and its role", tag="admin", security=ADMIN, ok=_json("Me")),
    ("GET", "/admin/admins"): op("Admin accounts (owner)", tag="admin", security=ADMIN, ok=_json("AdminList")),
    ("POST", "/admin/admins"): op(
        "Add an admin account (owner)", tag="admin", security=ADMIN, body="AdminWrite", status="201",
        ok=_json("AdminView", "added"),
        extra={"400": _json("Error", "validation_failed: the field is named (an unknown field too); nothing added"),
               "409": _json("Error", "conflict: an admin with that e-mail exists")}),
    ("DELETE", "/admin/admins/{email}"): op("Remove an admin account (owner)", tag="admin", security=ADMIN,
                                            ok=_json("AdminRemoved"), extra=NOT_FOUND),
    ("POST", "/admin/tokens"): op("Create a personal API token (shown once)", tag="admin", security=ADMIN,
                                  body="TokenWrite", status="201", ok=_json("TokenCreated", "created"),
                                  extra={**NO_ACCOUNT, "400": _json("Error", "validation_failed: name")}),
    ("DELETE", "/admin/tokens/{token_id}"): op("Revoke a personal API token", tag="admin", security=ADMIN,
                                               ok=_json("TokenView", "revoked (a repeat answers the same)"),
                                               extra={**NOT_FOUND, **NO_ACCOUNT}),
    ("GET", "/admin/audit"): op("The audit log: who did what, when and why", tag="admin", security=ADMIN,
                                ok=_json("AuditLog"),
                                query=[q("actor", "an admin's email"), q("action", "the action"),
                                       q("target", "what it was done to (`enrollment:12`, …)"), *paged(100)]),
    # manual operations, each with a required reason and an audit entry (operator)
    ("POST", "/admin/enrollments"): op("Enrol a student by hand (with or without the bundle)", tag="admin",
                                       security=ADMIN, body="EnrollByHand", status="201",
                                       ok=_json("EnrolledByHand", "enrolled"), extra=NOT_FOUND),
    ("POST", "/admin/enrollments/{enrollment_id}/revoke"): op("Revoke an enrollment by hand", tag="admin",
                                                              security=ADMIN, body="Reason",
                                                              ok=_json("EnrollmentMoved"), extra=NOT_FOUND),
    ("POST", "/admin/enrollments/{enrollment_id}/reinstate"): op("Reinstate an enrollment by hand", tag="admin",
                                                                 security=ADMIN, body="Reason",
                                                                 ok=_json("EnrollmentMoved"),
                                                                 extra={**NOT_FOUND, "409": _json(
                                                                     "Error", "not_allowed: not revoked or suspended, "
                                                                     "refunded in full, a dispute lost, or never "
                                                                     "active; already_enrolled: the student holds "
                                                                     "the course through another enrollment")}),
    ("POST", "/admin/enrollments/{enrollment_id}/refund"): op(
        "Refund (preview first; keep_access for a goodwill refund)", tag="admin", security=ADMIN, body="RefundByHand",
        headers=[h("Idempotency-Key", "a retry with the same key reuses the refund asked for: never a second one",
                 max_length=128)],
        ok=_json("RefundPreview", "the preview (`\"preview\": true`): what the refund would change"),
        extra={**NOT_FOUND, "409": _json("Error", "not_refundable, not_allowed (the key was used for another "
                                                  "enrollment), or idempotency_key_reused (with another amount "
                                                  "or keep_access)"),
               "201": _json("Refunded", "refunded: the admin refund (`succeeded`) and the enrollment"),
               "503": _json("Error", "stripe_not_configured: STRIPE_API_KEY is not set"),
               "402": _json("RefundNotMade", "stripe_refused: Stripe refused the refund (recorded failed)"),
               "502": _json("RefundNotMade", "stripe_unavailable: the outcome is unknown (recorded pending); send "
                                             "the same request with the same Idempotency-Key")}),
    ("POST", "/admin/students/{student_id}/credits"): op(
        "Adjust a student's credits (±, expiry)", tag="admin", security=ADMIN, body="CreditAdjustment", status="201",
        ok=_json("CreditsAdjusted", "adjusted (or, the same Idempotency-Key again, the adjustment it made)"),
        headers=[h("Idempotency-Key", "the same key with the same body answers the adjustment it made: never a "
                                      "second one", max_length=128)],
        extra={**NOT_FOUND, "409": _json("Error", "not_enough_credit, or idempotency_key_reused (with another "
                                                  "kind, quantity or expires_at)")}),
    ("GET", "/v1/students/{student_id}/credits/statement"): op(
        "Every ledger entry with its cause in words and a running balance", tag="read", security=READ,
        ok=_json("CreditStatement"), description="Meant to be shown to the student. A manual adjustment's `description` carries the reason the "
                    "studio wrote (`2 group credits added by the studio: birthday`) and never names the admin who "
                    "made it; the reasons of other admin actions (enrol by hand, revoke, reinstate, refund) are "
                    "not on the statement: their lines say what happened (`… was reinstated`)."),
    # the studio's pages and forms
    ("GET", "/admin/ui/account"): op("My account: personal tokens (page)", tag="dashboard", ok=HTML),
    ("POST", "/admin/ui/account/tokens"): op("Create a personal token (form): the page, with the token shown once",
                                             tag="dashboard", ok=HTML, status="201"),
    ("POST", "/admin/ui/account/tokens/{token_id}/revoke"): op("Revoke a personal token (form): the page",
                                                               tag="dashboard", ok=HTML),
    ("GET", "/admin/ui/audit"): op("The audit log (page)", tag="dashboard", ok=HTML),
    ("GET", "/admin/ui/find"): op("Find any id; pending events and workers (page)", tag="dashboard", ok=HTML),
    ("GET", "/admin/ui/students/{student_id}"): op(
        "One student: enrollments, credit statement and timeline (page)", tag="dashboard", ok=HTML,
        query=[TIMELINE_KIND], extra={"400": _json("Error", "validation_failed: an unknown kind")}),
    ("POST", "/admin/ui/students/{student_id}/credits"): op("Adjust credits (form)", tag="dashboard",
                                                            ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/students/{student_id}/enrollments"): op("Enrol by hand (form)", tag="dashboard",
                                                                ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/enrollments/{enrollment_id}/revoke"): op("Revoke (form)", tag="dashboard", ok=REDIRECT,
                                                                 status="302"),
    ("POST", "/admin/ui/enrollments/{enrollment_id}/reinstate"): op("Reinstate (form)", tag="dashboard",
                                                                    ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/enrollments/{enrollment_id}/refund"): op("Refund, or its preview (form)", tag="dashboard",
                                                                 ok=HTML),
    # the catalog: everyone with a session reads; the forms need the owner role
    ("GET", "/admin/ui/catalog"): op("Courses and packages with status, Stripe ids and drift (page)",
                                     tag="dashboard", ok=HTML),
    ("POST", "/admin/ui/catalog/courses"): op("Create a draft course (form, owner)", tag="dashboard", ok=REDIRECT,
                                              status="302"),
    ("GET", "/admin/ui/catalog/courses/{code}"): op("The course builder (page)", tag="dashboard", ok=HTML),
    ("POST", "/admin/ui/catalog/courses/{code}/edit"): op(
        "One builder edit (form, owner); on a published course the what-if page first, confirm saves",
        tag="dashboard", ok=HTML, extra={"302": REDIRECT}),
    ("POST", "/admin/ui/catalog/courses/{code}/publish"): op("Publish a course to Stripe (form, owner)",
                                                             tag="dashboard", ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/catalog/packages"): op("Create a package (form, owner)", tag="dashboard", ok=REDIRECT,
                                               status="302"),
    ("GET", "/admin/ui/catalog/packages/{code}"): op("One package (page)", tag="dashboard", ok=HTML),
    ("POST", "/admin/ui/catalog/packages/{code}"): op("Save a package (form, owner)", tag="dashboard",
                                                      ok=REDIRECT, status="302"),
    ("POST", "/admin/ui/catalog/packages/{code}/publish"): op("Publish a package to Stripe (form, owner)",
                                                              tag="dashboard", ok=REDIRECT, status="302"),
}

_PARAM = re.compile(r"<(?:(?P<converter>[^:<>(]+)(?:\([^)]*\))?:)?(?P<name>[^<>]+)>")


def openapi_path(rule: str) -> str:
    return _PARAM.sub(lambda m: "{" + m.group("name") + "}", rule)


def routes(app: Flask) -> list[tuple[str, str, list[dict]]]:
    """(method, OpenAPI path, path parameters) for every route of the app."""
    found = []
    for rule in app.url_map.iter_rules():
        params = [{"name": m.group("name"), "in": "path", "required": True,
                   "schema": {"type": "integer", "minimum": 0} if m.group("converter") == "int"
                   else {"type": "string"}}
                  for m in _PARAM.finditer(rule.rule)]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, openapi_path(rule.rule), params))
    return found


def build_document(app: Flask) -> dict:
    paths: dict[str, dict] = {}
    for method, path, params in routes(app):
        operation = dict(OPERATIONS.get((method, path)) or {
            "summary": "undocumented", "responses": {"default": {"description": "undocumented"}}})
        # any route can fail unexpectedly: `internal_error`, nothing accepted, retry later
        operation["responses"] = {**operation["responses"], "500": _json("Error", "internal_error")}
        # and any can find the database not answering: `database_unavailable`, nothing saved, retry (ingress.errors)
        unavailable = "database_unavailable: the database is not answering; nothing was saved, retry after Retry-After"
        declared = operation["responses"].get("503")
        operation["responses"]["503"] = ({**declared, "description": f"{declared['description']}; or {unavailable}"}
                                         if declared else _json("Error", unavailable))
        if path.startswith(limits.PROTECTED_PREFIXES):  # an address past its failed authentications: any route
            operation["responses"].setdefault("429", ERRORS["429"])
            if method != "GET":  # a write that raced another on the same unique key (ingress.errors)
                operation["responses"].setdefault("409", _json("Error", f"conflict: {CONFLICT_MESSAGE}"))
        # any route refuses a NUL character in a path or query parameter (ingress.guards)
        operation["responses"].setdefault("400", _json("Error", "a bad parameter, named in the message (e.g. "
                                                                "invalid_parameter: a NUL character in a path "
                                                                "or query parameter)"))
        if method != "GET":  # any body: bounded in size and in time (ingress.bodies)
            operation["responses"].setdefault("408", _json("Error", "request_timeout: the body stalled or ended "
                                                                    "before its length; nothing was done"))
            operation["responses"].setdefault("413", _json("Error", "payload_too_large: body over 256 KiB"))
        elif "dashboard" in operation.get("tags", ()) and path != "/admin/login":
            operation["responses"].setdefault("302", REDIRECT)  # no session: to the login page
        if params:  # an unknown id or code (or an integer out of range: no such route)
            operation["parameters"] = params + operation.get("parameters", [])
            operation["responses"] = {"404": _json("Error", "not found"), **operation["responses"]}
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "coursepipe", "version": "1",
                 "description": "Stripe and platform events in; enrollments, credits, progress and outbound "
                                "platform events out. The integration guide is docs/platform.md."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "ADMIN_TOKEN (every route), a READ_API_TOKEN "
                                                          "(GET /v1/… and POST /v1/checkout-sessions), or "
                                                          "a personal API token (cpa_…) acting with its "
                                                          "admin's role: any role reads /v1, an operator "
                                                          "may also create checkout sessions"}},
            "schemas": {**SCHEMAS, **event_schemas()},
        },
    }


def route_table(doc: dict) -> str:
    """The document's routes as the Markdown table docs/platform.md shows (kept equal by a test)."""
    lines = ["| method | path | token | what |", "| --- | --- | --- | --- |"]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            token = ("read or admin" if path.startswith("/v1/") else "dashboard login" if operation["tags"] == ["dashboard"]
                     else "admin" if operation["security"] else "none")
            lines.append(f"| {method.upper()} | `{path}` | {token} | {operation['summary']} |")
    return "\n".join(lines)


@lru_cache(maxsize=8)
def _cached(app_id: int, app: Flask) -> dict:
    return build_document(app)


@bp.get("/openapi.json")
def document():
    app = current_app._get_current_object()
    return jsonify(_cached(id(app), app))
