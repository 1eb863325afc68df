"""One structured (JSON) line per log record; `extra={"event": {...}}` fields are merged in.

Every process logs this way: `coursepipe serve` and every other command (the CLI's group callback), the
gunicorn ingress (`ingress/gunicorn_conf.py` takes `dict_config()`), and Dramatiq's main and worker processes
(`coursepipe worker` configures logging before Dramatiq would, and `workers.app` again in each worker).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone

from db.types import redact_emails

# Admin actions (dashboard replay, refulfill, outbox retry, …) are logged here at INFO, and this logger
# keeps INFO whatever LOG_LEVEL says: an audit line is never filtered out.
AUDIT_LOGGER = "coursepipe.audit"
# set-up chatter below WARNING that is no event of ours (alembic logs a line per plugin on import)
QUIET_LOGGERS = ("alembic.runtime.plugins",)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            # no e-mail address in a log line, whoever wrote the message (a driver's error, an SMTP answer)
            "msg": redact_emails(record.getMessage()),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update({k: redact_emails(v) if isinstance(v, str) else v for k, v in event.items()})
        if record.exc_info:
            line["exc"] = redact_emails(self.formatException(record.exc_info))
        return json.dumps(line, default=str)


def audit_logger() -> logging.Logger:
    return logging.getLogger(AUDIT_LOGGER)


def _set_levels(level: str | int) -> None:
    logging.getLogger().setLevel(level)
    audit_logger().setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_logging(level: str | None = None) -> None:
    """JSON lines on this process's current stderr (a Dramatiq worker process's is its pipe to the main one)."""
    root = logging.getLogger()
    level = level or os.environ.get("LOG_LEVEL", "INFO")
    if any(isinstance(h.formatter, JsonFormatter) and getattr(h, "stream", None) is sys.stderr for h in root.handlers):
        _set_levels(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    _set_levels(level)


def dict_config(level: str | None = None) -> dict:
    """The same set-up as `logging.config.dictConfig` wants it (gunicorn's `logconfig_dict`)."""
    level = level or os.environ.get("LOG_LEVEL", "INFO")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "coursepipe.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            AUDIT_LOGGER: {"level": "INFO"},
            **{name: {"level": "WARNING"} for name in QUIET_LOGGERS},
            "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        },
    }
