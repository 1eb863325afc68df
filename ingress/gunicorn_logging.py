"""gunicorn's logger for the ingress (`logger_class` in gunicorn.conf.py): access lines only when asked for.

gunicorn writes an access line for every request whenever `logconfig_dict` is set, whatever `accesslog`
says, and gunicorn.conf.py sets `logconfig_dict` for its JSON lines. The ingress already writes one line per
event ("event received", with its source, type, inbox row and outcome), and an access line cost about a tenth
of a webhook's CPU (docs/performance.md). Here, as without `logconfig_dict`, access lines are written only
when an access log is asked for: `--access-logfile -` (or `accesslog` in the settings); they are JSON lines
on stderr like the rest.
"""
from __future__ import annotations

from gunicorn import glogging


class Logger(glogging.Logger):
    @property
    def access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)

    def access(self, resp, req, environ, request_time) -> None:
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)
