"""Explicit state machines: one table of allowed moves; a re-applied move is a no-op."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Generic, TypeVar

from sqlalchemy import insert
from sqlalchemy.orm import Session

from db.models import TransitionLog
from db.types import utcnow
from tasks.errors import IllegalTransition

S = TypeVar("S", bound=Enum)


@dataclass(frozen=True)
class StateMachine(Generic[S]):
    """`entity` names the rows in `transition_log`; `logged=False` for rows too many to log one line per
    move (the inbox), whose table of moves still guards every change."""

    entity: str
    allowed: dict[S, frozenset[S]]
    logged: bool = True

    def can(self, current: S, target: S) -> bool:
        return current == target or target in self.allowed.get(current, frozenset())

    def sources(self, target: S) -> tuple[S, ...]:
        """Every status from which `target` may be reached (for bulk moves written as one UPDATE)."""
        return tuple(s for s, targets in self.allowed.items() if target in targets)

    def begin(self, obj, *, session: Session, cause: str | None = None, enrollment_id: int | None = None,
              at: datetime | None = None, attr: str = "status") -> None:
        """The first line of `obj`'s history: created in its current status (the row must have its id)."""
        if self.logged:
            session.add(TransitionLog(entity=self.entity, entity_id=str(obj.id), from_status=None,
                                      to_status=getattr(obj, attr).value, cause=cause,
                                      enrollment_id=enrollment_id, at=at or utcnow()))

    def log_moves(self, session: Session, moves: list[tuple[object, S, S, str | None, int | None]], *,
                  at: datetime) -> None:
        """Check and log the moves a set-based statement of the same unit of work makes, whose WHERE admits only
        the `from` statuses given: (entity id, from, to, cause, enrollment id) each, the lines in one INSERT.
        A move not in the table raises IllegalTransition, and the unit of work rolls back."""
        for _, current, target, _, _ in moves:
            if target not in self.allowed.get(current, frozenset()):
                raise IllegalTransition(self.entity, str(current.value), str(target.value))
        if self.logged and moves:
            session.execute(insert(TransitionLog), [
                {"entity": self.entity, "entity_id": str(entity_id), "from_status": current.value,
                 "to_status": target.value, "cause": cause, "enrollment_id": enrollment_id, "at": at}
                for entity_id, current, target, cause, enrollment_id in moves])

    def move(
        self,
        obj,
        target: S,
        *,
        session: Session,
        cause: str | None = None,
        enrollment_id: int | None = None,
        at: datetime | None = None,
        attr: str = "status",
    ) -> bool:
        """Move `obj` to `target`. Returns False if it was already there (a no-op)."""
        current = getattr(obj, attr)
        if current == target:
            return False
        if target not in self.allowed.get(current, frozenset()):
            raise IllegalTransition(self.entity, str(current.value), str(target.value))
        setattr(obj, attr, target)
        if not self.logged:
            return True
        session.add(
            TransitionLog(
                entity=self.entity,
                entity_id=str(obj.id) if obj.id is not None else "?",
                from_status=current.value,
                to_status=target.value,
                cause=cause,
                enrollment_id=enrollment_id,
                at=at or utcnow(),
            )
        )
        return True
