"""Stripe objects in a shape Stripe never sends: named once, failed permanently, never retried.

Stripe's own webhook payloads always have these JSON types; a payload that does not (a hand-made
request with a valid signature, a test tool, a future API change) cannot be mended by retrying, and
read as if valid it would write wrong amounts or ids. Each check returns what is wrong, or None.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from tasks.catalog.services import PRICE_ID_PATTERN
from tasks.errors import PermanentError
from tasks.events import INT32_MAX, LAST_UNIX_TIME, stripe_id

CURRENCY = re.compile(r"[A-Za-z]{3}")  # an ISO 4217 code, as Stripe writes it (lower case)


def problem(obj: dict[str, Any], *, objects: Iterable[str] = (), strings: Iterable[str] = (),
            amounts: Iterable[str] = (), ids: Iterable[str] = (), times: Iterable[str] = (),
            prefix: str = "") -> str | None:
    """The first field of `obj` with the wrong JSON type (absent or null fields are not checked).

    objects: JSON objects; strings: strings (a `currency` among them: three letters); amounts: non-negative
    integers (Stripe's minor units) up to what an amount column holds (2,147,483,647; the catalog sells up to
    Stripe's 99,999,999); ids: a Stripe id, or the expanded object carrying it; times: Unix times.
    """
    for field in objects:
        if obj.get(field) is not None and not isinstance(obj[field], dict):
            return f"{prefix}{field} is not an object"
    for field in strings:
        if obj.get(field) is not None and not isinstance(obj[field], str):
            return f"{prefix}{field} is not a string"
        if field == "currency" and obj.get(field) is not None and not CURRENCY.fullmatch(obj[field]):
            return f"{prefix}currency is not a three-letter currency code"
    bounded = [(field, INT32_MAX, f"is beyond the largest amount coursepipe records ({INT32_MAX})")
               for field in amounts] + [(field, LAST_UNIX_TIME, "is not a Unix time") for field in times]
    for field, most, beyond in bounded:
        value = obj.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{prefix}{field} is not a non-negative integer"
        if value > most:
            return f"{prefix}{field} {beyond}"
    for field in ids:
        value = stripe_id(obj.get(field))
        if value is not None and not isinstance(value, str):
            return f"{prefix}{field} is not an id"
    return None


def require(kind: str, obj: dict[str, Any], found: str | None) -> None:
    """Raise the permanent failure for `found` (a `problem` result) about a Stripe `kind` object."""
    if found:
        raise PermanentError(f"{kind} {obj.get('id')!r}: {found}")


REFUND_STATUSES = ("pending", "requires_action", "succeeded", "failed", "canceled")  # Stripe's
REFUND_NOT_COUNTED = ("failed", "canceled")  # a Stripe refund in these states returned no money


def refund_problem(refund: Any, prefix: str = "") -> str | None:
    if not isinstance(refund, dict):
        return f"{prefix.rstrip('.') or 'refund'} is not an object"
    if not refund.get("id"):
        return f"{prefix}id is missing"
    if not refund.get("amount"):  # Stripe refunds at least one minor unit
        return f"{prefix}amount is missing or zero"
    found = problem(refund, objects=("metadata",), strings=("id", "status", "currency", "failure_reason"),
                    amounts=("amount",), ids=("payment_intent", "charge"), prefix=prefix)
    if found is None and refund.get("status") is not None and refund["status"] not in REFUND_STATUSES:
        # an unknown state would otherwise be counted as money returned
        return f"{prefix}status {refund['status']!r} is not one of {', '.join(REFUND_STATUSES)}"
    return found


def charge_problem(charge: dict[str, Any]) -> str | None:
    found = problem(charge, objects=("refunds",), strings=("id",), amounts=("amount", "amount_refunded"),
                    ids=("payment_intent",))
    if found:
        return found
    if charge.get("refunded") is not None and not isinstance(charge["refunded"], bool):
        return "refunded is not a boolean"
    listed = (charge.get("refunds") or {}).get("data")
    if listed is not None and not isinstance(listed, list):
        return "refunds.data is not a list"
    for n, refund in enumerate(listed or []):
        found = refund_problem(refund, prefix=f"refunds.data[{n}].")
        if found:
            return found
    return None


def dispute_problem(dispute: dict[str, Any]) -> str | None:
    found = (problem(dispute, objects=("evidence_details",), strings=("id", "status", "reason", "currency"),
                     amounts=("amount",), ids=("payment_intent", "charge"))
             or problem(dispute.get("evidence_details") or {}, times=("due_by",), prefix="evidence_details."))
    return found


def line_items_problem(checkout: dict[str, Any]) -> str | None:
    """An embedded `line_items` list: objects, each with a price given as an id or as a price object."""
    items = checkout.get("line_items")
    if items is None:
        return None
    if not isinstance(items, dict):
        return "line_items is not an object"
    listed = items.get("data")
    if listed is not None and not isinstance(listed, list):
        return "line_items.data is not a list"
    for n, item in enumerate(listed or []):
        if not isinstance(item, dict):
            return f"line_items.data[{n}] is not an object"
        price = item.get("price")
        if isinstance(price, dict):
            found = problem(price, strings=("id",), ids=("product",), prefix=f"line_items.data[{n}].price.")
            if found:
                return found
        elif price is not None and not isinstance(price, str):
            return f"line_items.data[{n}].price is not a price"
    return None


LISTING_ID = re.compile(r"[0-9]{1,18}")  # a course's or package's row id, as coursepipe's sessions carry it


PRICE_ID = re.compile(PRICE_ID_PATTERN)  # a Stripe price id, as the catalog takes one and our sessions carry it


def sold_price(metadata: dict[str, Any]) -> str | None:
    """`metadata.coursepipe_price_id`, the price a session coursepipe created charged; None when absent or not
    a price id (a session made elsewhere: the listing's current price is recorded)."""
    value = metadata.get("coursepipe_price_id")
    return value if isinstance(value, str) and PRICE_ID.fullmatch(value) else None


def listing_id(metadata: dict[str, Any], kind: str) -> int | None:
    """`metadata.coursepipe_<kind>_id`, the row a session coursepipe created was opened for: its id, or None
    when absent or not a decimal id (a session made elsewhere; it is then matched by its code, never refused)."""
    value = metadata.get(f"coursepipe_{kind}_id")
    return int(value) if isinstance(value, str) and LISTING_ID.fullmatch(value) else None


def checkout_problem(checkout: dict[str, Any]) -> str | None:
    return (problem(checkout, objects=("metadata", "customer_details", "total_details"),
                    amounts=("amount_total", "amount_subtotal"),
                    strings=("id", "client_reference_id", "payment_intent", "currency", "customer_email",
                             "payment_status", "mode"))
            # Stripe metadata values are strings
            or problem(checkout.get("metadata") or {}, strings=("kind", "course_code", "package_code", "student_id"),
                       prefix="metadata.")
            or problem(checkout.get("customer_details") or {}, strings=("email", "name"), prefix="customer_details.")
            or problem(checkout.get("total_details") or {}, amounts=("amount_tax", "amount_discount"),
                       prefix="total_details.")
            or line_items_problem(checkout))
