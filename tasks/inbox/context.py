"""What a handler receives: the unit of work's session and everything else it may use, explicitly.

A handler never reaches the runner through hidden channels: settings, remote answers, the subjects it
provides (waking parked events) and the advisory locks it holds all live on its `HandlerContext`.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import InboxEvent
from tasks.errors import NeedsRemote


def lock_key(subject: str) -> int:
    """The advisory-lock key of a subject (the runner, `provides` and the purchase fast path agree on it)."""
    return zlib.crc32(subject.encode())


@dataclass(eq=False)
class HandlerContext:
    """One unit of work's view of the runner.

    `remote` holds what remote services answered for keys a handler asked for (`fetched`), fetched by
    the caller between transactions; `provided` the keys this unit of work makes available; `locks` the
    subjects whose advisory locks this transaction holds.
    """

    session: Session
    settings: Any = None
    remote: dict[str, Any] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)
    provided: set[str] = field(default_factory=set)

    def lock(self, subject: str | None) -> None:
        """Two units of work about the same thing never race (PostgreSQL advisory lock until commit)."""
        if not subject or self.session.get_bind().dialect.name != "postgresql" or subject in self.locks:
            return
        self.session.execute(select(func.pg_advisory_xact_lock(lock_key(subject))))
        self.locks.add(subject)

    def provides(self, *keys: str) -> None:
        """Declare that this unit of work makes `keys` available (wakes events waiting for them).

        It also takes each key's advisory lock until commit: an event parking itself on that key holds
        the same lock while it decides to wait, so a provider can never wake the parked rows just before
        the waiter's `waiting` status commits (a lost wake-up).
        """
        self.provided.update(keys)
        for key in sorted(keys):
            self.lock(key)

    def fetched(self, key: str, fetch: Callable[[], Any]) -> Any:
        """What a remote service answered for `key` (fetched by the caller outside the transaction).

        Not fetched yet: raises NeedsRemote, so no network call ever runs inside the transaction. A fetch
        that failed re-raises its error here, where the runner classifies it. `fetch` runs after the
        transaction ended: it must close over plain values, not ORM objects.
        """
        if key not in self.remote:
            raise NeedsRemote(key, fetch)
        answer = self.remote[key]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def rolled_back(self) -> None:
        """The transaction ended: its advisory locks are gone, and nothing it provided stands."""
        self.locks.clear()
        self.provided.clear()


# `HandlerContext.fetched`, as domain functions take it: (key, fetch) -> the answer
Fetched = Callable[[str, Callable[[], Any]], Any]


def not_fetched(key: str, fetch: Callable[[], Any]) -> Any:
    """For callers with no remote answers: every look-up is asked for (NeedsRemote)."""
    raise NeedsRemote(key, fetch)


Handler = Callable[[HandlerContext, InboxEvent], None]
# (source, type) -> handler; built by the composition root from each domain package's HANDLERS
HandlerTable = Mapping[tuple[str, str], Handler]
