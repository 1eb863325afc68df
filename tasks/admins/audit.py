"""The audit log: who did what, when and why. Written in the same transaction as the action it records,
so an action that rolled back leaves no entry and an entry always means the action happened.

Each entry also gives one log line, `"msg": "admin action"` on the `coursepipe.audit` logger (which
LOG_LEVEL never silences), written once its transaction has committed: a line exists exactly when the
entry does, whatever the HTTP answer or the command's exit (an entry written in a savepoint that is rolled
back has none). The line names the entry, the action, the target, the role, the admin account id and
whether it was the break-glass token, plus what the caller adds (`log_fields`); never the reason (free
text) or an e-mail.
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from db.models import AuditEntry
from tasks.admins.accounts import BREAK_GLASS_ACTOR, Principal
from tasks.errors import ValidationFailed

MAX_REASON = 2000

log = logging.getLogger("coursepipe.audit")  # coursepipe.logs.AUDIT_LOGGER
# in Session.info: (scope, line) of entries not committed yet; the scope is the savepoint the entry was
# written in (None: the transaction itself), so a savepoint rolled back takes only its own lines with it
_PENDING = "coursepipe.audit_lines"


@event.listens_for(Session, "after_commit")
def _log_committed(session: Session) -> None:
    pending = session.info.get(_PENDING)
    if not pending:
        return
    savepoint = session.get_nested_transaction()  # the one released now; None: the transaction committed
    if savepoint is not None:  # its lines now stand or fall with the enclosing scope
        outer = savepoint.parent if savepoint.parent is not None and savepoint.parent.nested else None
        session.info[_PENDING] = [(outer if scope is savepoint else scope, line) for scope, line in pending]
        return
    del session.info[_PENDING]
    for _scope, line in pending:
        log.info("admin action", extra={"event": line})


@event.listens_for(Session, "after_rollback")
def _drop_rolled_back(session: Session) -> None:
    savepoint = session.get_nested_transaction()  # the one rolled back now; None: the whole transaction
    if savepoint is None:
        session.info.pop(_PENDING, None)
    elif session.info.get(_PENDING):
        session.info[_PENDING] = [(scope, line) for scope, line in session.info[_PENDING] if scope is not savepoint]


def required_reason(value: Any) -> str:
    """A manual operation says why: a non-empty reason, at most 2000 characters."""
    reason = value.strip() if isinstance(value, str) else ""
    if not reason:
        raise ValidationFailed("reason: required (say why, for the audit log)", field="reason")
    if len(reason) > MAX_REASON:
        raise ValidationFailed(f"reason: at most {MAX_REASON} characters", field="reason")
    return reason


TARGET_MAX = AuditEntry.__table__.c.target.type.length


def record(*, session: Session, principal: Principal, action: str, target: str | None = None,
           reason: str | None = None, details: dict[str, Any] | None = None,
           log_fields: dict[str, Any] | None = None) -> AuditEntry:
    """The entry, in the caller's transaction; its log line once that commits."""
    if target is not None and len(target) > TARGET_MAX:  # an id too long to exist: kept readable, never a 500
        target = target[:TARGET_MAX - 1] + "…"
    entry = AuditEntry(actor=principal.actor, role=principal.role, action=action, target=target,
                       reason=(reason or None), details=details or {})
    session.add(entry)
    session.flush()
    line = {"audit_id": entry.id, "action": action, "target": target, "role": entry.role,
            "admin_id": principal.admin_id, "break_glass": principal.actor == BREAK_GLASS_ACTOR, **(log_fields or {})}
    session.info.setdefault(_PENDING, []).append((session.get_nested_transaction(), line))
    return entry


def keyed(*, session: Session, action: str, target: str, request_key: str) -> AuditEntry | None:
    """The entry of an action asked with this Idempotency-Key (`details.request_key`) on this target, if any."""
    return session.scalar(select(AuditEntry).where(
        AuditEntry.action == action, AuditEntry.target == target,
        AuditEntry.details["request_key"].as_string() == request_key).order_by(AuditEntry.id).limit(1))


def entries(*, session: Session, actor: str | None = None, action: str | None = None, target: str | None = None,
            limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    """Newest first; `before`: only entries with a smaller id (the next page of a list read a page at a time)."""
    query = select(AuditEntry)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action == action)
    if target:
        query = query.where(AuditEntry.target == target)
    return list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)))


def entry_view(entry: AuditEntry) -> dict[str, Any]:
    return {"id": entry.id, "at": entry.at.isoformat(), "actor": entry.actor, "role": entry.role,
            "action": entry.action, "target": entry.target, "reason": entry.reason, "details": entry.details}
