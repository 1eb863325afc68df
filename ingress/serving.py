"""`coursepipe serve`'s HTTP server: werkzeug's threaded server (a thread per connection, each read bounded by
READ_TIMEOUT_SECONDS), logging one JSON line per request — method, path without its query string (where search terms and e-mails would ride),
status — through the process's handlers, instead of werkzeug's ANSI-coloured text lines."""
from __future__ import annotations

import logging

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

log = logging.getLogger("coursepipe.http")
READ_TIMEOUT_SECONDS = 10


class RequestHandler(WSGIRequestHandler):
    # each read (request line, headers, body) and write on a connection waits at most this long, then the
    # connection is dropped: a client that stops sending does not keep its thread forever
    timeout = READ_TIMEOUT_SECONDS

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", None)  # unset when the request line itself was bad
        log.info("request", extra={"event": {
            "method": getattr(self, "command", None), "path": path.split("?", 1)[0] if path else None,
            "status": int(code) if str(code).isdigit() else str(code), "remote": self.address_string()}})

    def log(self, type: str, message: str, *args) -> None:
        """werkzeug's other lines (a bad request line, an error), as plain text."""
        getattr(log, type if type in ("warning", "error", "exception") else "info")(message.rstrip(), *args)


def make_ingress_server(host: str, port: int, app) -> BaseWSGIServer:
    return make_server(host, port, app, threaded=True, request_handler=RequestHandler)
