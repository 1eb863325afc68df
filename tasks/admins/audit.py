"""The audit log: who did what, when and why. Written in the same transaction as the action it records,
so an action that rolled back leaves no entry and an entry always means the action happened."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEntry
from tasks.admins.accounts import Principal
from tasks.errors import ValidationFailed

MAX_LIMIT = 500
MAX_REASON = 2000


def required_reason(value: Any) -> str:
    """A manual operation says why: a non-empty reason, at most 2000 characters."""
    reason = value.strip() if isinstance(value, str) else ""
    if not reason:
        raise ValidationFailed("reason: required (say why, for the audit log)", field="reason")
    if len(reason) > MAX_REASON:
        raise ValidationFailed(f"reason: at most {MAX_REASON} characters", field="reason")
    return reason


def record(*, session: Session, principal: Principal, action: str, target: str | None = None,
           reason: str | None = None, details: dict[str, Any] | None = None) -> AuditEntry:
    entry = AuditEntry(actor=principal.actor, role=principal.role, action=action, target=target,
                       reason=(reason or None), details=details or {})
    session.add(entry)
    session.flush()
    return entry


def entries(*, session: Session, actor: str | None = None, action: str | None = None, target: str | None = None,
            limit: int = 100) -> list[AuditEntry]:
    query = select(AuditEntry)
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
