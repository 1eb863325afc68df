"""Optimistic concurrency for the admin catalog: the admin view of a course or package, its entity tag, and the
conditions a write may set on it (HTTP's If-Match / If-None-Match).

The entity tag is a digest of the whole admin view, what `GET /admin/courses/<code>` (or `/admin/packages/<code>`)
answers: every save that changes anything and every publishing step (the status, the Stripe ids, the calls made,
drift found) changes it; a save that changes nothing keeps it. Equal views have equal tags, so the tag a PUT
answers is the one the next GET answers. A write checks its conditions with `require`, first in its own
transaction and under the row's lock, which every save and delete takes, and publishing too before it changes the
course or package (its status, its Stripe ids): nothing can come between the check and the write.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from db.models import CourseProgram, CreditPackage
from tasks.catalog import publishing
from tasks.catalog import services as catalog
from tasks.errors import PermanentError

ANY = "*"  # If-Match: * (the listing must exist); If-None-Match: * (it must not)


class PreconditionFailed(PermanentError):
    """Raised when a write's If-Match or If-None-Match does not hold for the course or package as it stands;
    nothing is changed."""


@dataclass(frozen=True)
class Conditions:
    """What a write requires of the current state. `if_match`: its tag is one of these (ANY: it exists);
    `if_none_match`: its tag is none of these (ANY: it does not exist). None: no such condition."""

    if_match: frozenset[str] | None = None
    if_none_match: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return self.if_match is not None or self.if_none_match is not None


def course_view(session: Session, program: CourseProgram, mode: str | None = None) -> dict[str, Any]:
    """The admin view of a course: its fields, steps and bundle, and its Stripe state (in `mode`, the key's)."""
    view = catalog.course_view(session, program)
    view["stripe"] = publishing.stripe_state(session, publishing.COURSE, program, mode)
    return view


def package_view(session: Session, package: CreditPackage, mode: str | None = None) -> dict[str, Any]:
    view = catalog.package_view(package)
    view["stripe"] = publishing.stripe_state(session, publishing.PACKAGE, package, mode)
    return view


def entity_tag(view: dict[str, Any]) -> str:
    """The view's strong validator (opaque, unquoted): a digest of its canonical JSON."""
    canonical = json.dumps(view, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def current_tag(session: Session, kind: str, code: str, *, lock: bool = False, mode: str | None = None) -> str | None:
    """The entity tag of the live course or package `code` (None: there is none); `lock` holds its row until the
    caller's transaction ends."""
    if kind == publishing.COURSE:
        program = catalog.live_program(session, code, lock=lock)
        return None if program is None else entity_tag(course_view(session, program, mode))
    package = catalog.live_package(session, code, lock=lock)
    return None if package is None else entity_tag(package_view(session, package, mode))


def require(session: Session, *, kind: str, code: str, conditions: Conditions, lock: bool = True,
            mode: str | None = None) -> None:
    """Check a write's `conditions` against the course or package as it stands, its row locked (`lock`) so that
    the write that follows in the same transaction acts on what was checked. PreconditionFailed when they do not
    hold. No conditions: nothing is read."""
    if not conditions:
        return
    tag = current_tag(session, kind, code, lock=lock, mode=mode)
    what = f"{kind} {code}"
    if conditions.if_match is not None:
        if tag is None:
            raise PreconditionFailed(f"{what} does not exist, and If-Match requires it to; nothing changed")
        if not matches(tag, conditions.if_match):
            raise PreconditionFailed(f"{what} has changed since the ETag that If-Match names was read (a save or a "
                                     f"publish came between): GET it again, apply your change to what it answers "
                                     f"and send it with the new ETag; nothing changed")
    if conditions.if_none_match is not None and tag is not None and matches(tag, conditions.if_none_match):
        if ANY in conditions.if_none_match:
            raise PreconditionFailed(f"{what} already exists, and If-None-Match: * only creates; nothing changed")
        raise PreconditionFailed(f"{what} still has an ETag that If-None-Match names; nothing changed")


def matches(tag: str, tags: frozenset[str]) -> bool:
    """The entity tag is among `tags` (ANY: any tag is)."""
    return ANY in tags or tag in tags
