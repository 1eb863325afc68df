"""The course builder's edits: one small change (move a step, attach a class, set the bundle…) applied to
the course as it stands, giving the whole course to save (`services.save_course`) or to ask the what-if of
(`changes.course_change`). Each edit names what it touches; an unknown step or class, or an impossible
move (the first step up), raises ValidationFailed and nothing is saved.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.enums import BundleKind, ClassStatus, CreditType
from db.models import CourseProgram, CreditPackage, GroupClass
from db.types import utcnow
from tasks import currencies
from tasks.catalog.services import course_view, option_view
from tasks.errors import ValidationFailed

MONEY = re.compile(r"^\d{1,8}(?:[.,]\d{1,3})?$")
MAX_CLASSES = 300  # mirrored classes offered as options on the builder
RECENT = timedelta(days=1)  # a class that started within this is still offered


def course_body(session: Session, program: CourseProgram) -> dict[str, Any]:
    """The course as it stands, as a PUT body (steps in order, options as class ids)."""
    view = course_view(session, program)
    return {"title": view["title"], "description": view["description"], "marketing_copy": view["marketing_copy"],
            "timezone": view["timezone"], "price": dict(view["price"]), "bundle": view["bundle"],
            "steps": [{"label": s["label"], "title": s["title"], "summary": s["summary"], "options": s["options"]}
                      for s in view["steps"]]}


def fingerprint(body: dict[str, Any]) -> str:
    """Names one state of a course: a confirm made against an older state is refused."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


def minor_units(raw: Any, currency: str, field: str = "price") -> int:
    """The amount in the currency's minor units: '120.00' EUR → 12000, '1200' JPY → 1200, '12.5' KWD → 12500."""
    text = raw.strip() if isinstance(raw, str) else ""
    if not MONEY.fullmatch(text):
        raise ValidationFailed(f"{field}: give an amount like 120.00", field=field)
    whole, _, fraction = text.replace(",", ".").partition(".")
    places = currencies.exponent(currency)
    # more digits than the currency has are refused, not rounded ('1,234' EUR is no price); zeros written after
    # a whole yen amount ('1200.00') change nothing
    if len(fraction) > max(places, 2) or fraction[places:].strip("0"):
        decimals = f"{places} decimals" if places else "no decimals"
        raise ValidationFailed(f"{field}: {currency.upper()} has {decimals}", field=field)
    amount = int(whole) * 10 ** places + int(fraction[:places].ljust(places, "0") or 0)
    problem = currencies.charge_problem(amount, currency)
    if problem:
        raise ValidationFailed(f"{field}: {problem}", field=field)
    return amount


def major_units(amount: int | None, currency: str | None) -> str:
    """What `minor_units` reads back: 12000 EUR → '120.00', 12500 KWD → '12.500'."""
    if amount is None:
        return ""
    return currencies.major(amount, currency)


# --------------------------------------------------------------------------- the edits


def _step_index(body: dict[str, Any], label: Any) -> int:
    for i, step in enumerate(body["steps"]):
        if step["label"] == label:
            return i
    raise ValidationFailed(f"label: the course has no step {label!r}", field="label")


def _text(form: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = form.get(name)
    value = value.strip() if isinstance(value, str) else ""
    if required and not value:
        raise ValidationFailed(f"{name}: required", field=name)
    return value or None


def _details(body, form):
    body["title"] = _text(form, "title")
    body["timezone"] = _text(form, "timezone", required=False) or body["timezone"]
    currency = (_text(form, "currency", required=False) or body["price"]["currency"]).lower()
    body["price"] = {"amount": minor_units(form.get("price"), currency), "currency": currency}
    if "description" in form:
        body["description"] = _text(form, "description", required=False)


def _move(body, form):
    i = _step_index(body, form.get("label"))
    direction = form.get("direction")
    if direction not in ("up", "down"):
        raise ValidationFailed("direction: up or down", field="direction")
    j = i - 1 if direction == "up" else i + 1
    if not 0 <= j < len(body["steps"]):
        raise ValidationFailed(f"direction: step {body['steps'][i]['label']!r} is already "
                               f"{'first' if direction == 'up' else 'last'}", field="direction")
    body["steps"][i], body["steps"][j] = body["steps"][j], body["steps"][i]


def _remove_step(body, form):
    if len(body["steps"]) == 1:
        raise ValidationFailed("label: a course keeps at least one step", field="label")
    del body["steps"][_step_index(body, form.get("label"))]


def _add_step(body, form):
    label = _text(form, "label")
    if any(s["label"] == label for s in body["steps"]):
        raise ValidationFailed(f"label: the course already has a step {label!r}", field="label")
    body["steps"].append({"label": label, "title": _text(form, "title", required=False), "summary": None,
                          "options": []})


def _attach(body, form):
    step = body["steps"][_step_index(body, form.get("label"))]
    class_id = _text(form, "class_id")
    for other in body["steps"]:
        if class_id in other["options"]:
            raise ValidationFailed(f"class_id: class {class_id!r} already serves step {other['label']!r}",
                                   field="class_id")
    step["options"].append(class_id)


def _detach(body, form):
    step = body["steps"][_step_index(body, form.get("label"))]
    class_id = form.get("class_id")
    if class_id not in step["options"]:
        raise ValidationFailed(f"class_id: class {class_id!r} is not an option of step {step['label']!r}",
                               field="class_id")
    step["options"].remove(class_id)


def _whole(raw: str) -> bool:
    """A whole number written in ASCII digits ("²" is a digit to str.isdigit, and int() refuses it)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 9


def _bundle(body, form):
    bundle = []
    for kind in BundleKind:
        raw = (form.get(kind.value) or "0").strip()
        if not _whole(raw):
            raise ValidationFailed(f"{kind.value}: a whole number of credits, 0 for none", field=kind.value)
        if int(raw):
            bundle.append({"kind": kind.value, "quantity": int(raw)})
    body["bundle"] = bundle


EDITS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "details": _details, "move": _move, "remove_step": _remove_step, "add_step": _add_step,
    "attach": _attach, "detach": _detach, "bundle": _bundle,
}


def edited(body: dict[str, Any], edit: Any, form: dict[str, Any]) -> dict[str, Any]:
    """`body` with one edit applied (a copy); the result still goes through `parse_course`."""
    if edit not in EDITS:
        raise ValidationFailed(f"edit: one of {', '.join(EDITS)}", field="edit")
    new = copy.deepcopy(body)
    EDITS[edit](new, form)
    return new


def describe(edit: str, form: dict[str, Any]) -> str:
    """The edit in words, for the what-if page and the flash message."""
    label, class_id = form.get("label"), form.get("class_id")
    return {
        "details": "change the title, price or time zone",
        "move": f"move step {label} {form.get('direction')}",
        "remove_step": f"remove step {label}",
        "add_step": f"add step {label}",
        "attach": f"attach class {class_id} to step {label}",
        "detach": f"detach class {class_id} from step {label}",
        "bundle": "change the bundle",
    }.get(edit, edit)


def new_course(form: dict[str, Any]) -> dict[str, Any]:
    """A draft from the builder's first form: title, price and the first step."""
    currency = (_text(form, "currency", required=False) or "eur").lower()
    return {"title": _text(form, "title"), "price": {"amount": minor_units(form.get("price"), currency),
                                                      "currency": currency},
            "timezone": _text(form, "timezone", required=False) or "UTC",
            "steps": [{"label": _text(form, "first_step"), "options": []}], "bundle": []}


# --------------------------------------------------------------------------- packages


def package_body(form: dict[str, Any]) -> dict[str, Any]:
    """A package from the builder's form (the price in major units, validity blank for none)."""
    currency = (_text(form, "currency", required=False) or "eur").lower()
    kind = form.get("kind")
    if kind not in {t.value for t in CreditType}:
        raise ValidationFailed("kind: group or private", field="kind")
    quantity, validity = (form.get("quantity") or "").strip(), (form.get("validity_days") or "").strip()
    if not _whole(quantity):
        raise ValidationFailed("quantity: a whole number of credits", field="quantity")
    if validity and not _whole(validity):
        raise ValidationFailed("validity_days: a whole number of days, blank for none", field="validity_days")
    return {"title": _text(form, "title"), "price": {"amount": minor_units(form.get("price"), currency),
                                                      "currency": currency},
            "credits": {"kind": kind, "quantity": int(quantity)}, "validity_days": int(validity) if validity else None}


def package_status(package: CreditPackage) -> str:
    """A package is on sale once it has a Stripe price."""
    return "published" if package.stripe_price_id else "draft"


# --------------------------------------------------------------------------- the class schedule


def offered_classes(session: Session, *, limit: int = MAX_CLASSES) -> list[dict[str, Any]]:
    """Mirrored classes an option can be chosen from: scheduled, from a day ago on, soonest first."""
    rows = session.scalars(select(GroupClass).where(GroupClass.starts_at >= utcnow() - RECENT,
                                                    GroupClass.status == ClassStatus.SCHEDULED)
                           .order_by(GroupClass.starts_at, GroupClass.id).limit(limit))
    return [{**option_view(c.id, c), "title": c.title} for c in rows]
