"""One error root for the domain; the runner decides retry / fail / park from the class."""
from __future__ import annotations


class TaskError(Exception):
    """Root of every error raised by `tasks/`."""


class PermanentError(TaskError):
    """Raised when retrying cannot help (unknown ids, malformed data): the event ends `failed`."""


class TransientError(TaskError):
    """Raised when a retry may succeed (a remote service down): retried with backoff."""


class NotFound(PermanentError):
    """Raised when a named record does not exist."""


class ValidationFailed(PermanentError):
    """Raised when input breaks a domain rule; `field` names the first offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class KeyReused(PermanentError):
    """Raised when an Idempotency-Key comes again with a different request than the one it was first sent with."""


class IllegalTransition(PermanentError):
    """Raised when a state machine is asked for a move its table does not allow."""

    def __init__(self, entity: str, current: str, target: str) -> None:
        super().__init__(f"{entity}: {current} -> {target} is not allowed")
        self.entity, self.current, self.target = entity, current, target


class WaitFor(TaskError):
    """Raised to park an event until another one arrives (e.g. a cancel before its booking).

    `key` names what is awaited, e.g. "booking:bk_1"; whoever provides it wakes the event.
    """

    def __init__(self, key: str, reason: str | None = None) -> None:
        super().__init__(reason or f"waiting for {key}")
        self.key = key


class NeedsRemote(TaskError):
    """Raised when a handler needs data from a remote service (Stripe) that it has not been given.

    The runner rolls the handler back, the caller runs `fetch` outside any transaction, and the
    handler runs again with the answer (see `tasks.inbox.fetched` and `tasks.inbox.run_event`).
    """

    def __init__(self, key: str, fetch) -> None:
        super().__init__(f"needs {key} from a remote service")
        self.key, self.fetch = key, fetch


class Ignored(TaskError):
    """Raised when a verified event needs no action (an unhandled type, an unpaid-and-unknown session)."""
