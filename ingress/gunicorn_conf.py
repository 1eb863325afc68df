"""gunicorn settings for the ingress: `gunicorn -c python:ingress.gunicorn_conf ingress.wsgi:app`, as
`coursepipe ingress` and docker-compose run it (a module of the package, so an installed copy has it too;
the checkout's gunicorn.conf.py names it for `gunicorn -c gunicorn.conf.py`).

Slow clients: `gthread` workers hand each connection to a thread only once it has sent data (gunicorn
parks idle ones in its poller); the head (request line and headers) must then be complete within
HEADER_READ_TIMEOUT seconds in all (`ingress.gunicorn_worker`), and each read of the body must return
within BODY_READ_TIMEOUT seconds (`pre_request` below) or it is a 408; either way the thread is free.
With WEB_CONCURRENCY × WEB_THREADS threads, that many slow senders at once are needed to delay anyone,
for at most those timeouts. Facing the internet, put a buffering proxy in front as well
(docs/runbook.md, "The edge").
"""
import os
import secrets

from coursepipe.logs import dict_config
from ingress.gunicorn_worker import end_head, env_number

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = env_number("WEB_CONCURRENCY", "2", int, 1, 64)
worker_class = "ingress.gunicorn_worker.HeadDeadlineThreadWorker"  # gthread, with a deadline on each head
threads = env_number("WEB_THREADS", "64", int, 1, 1024)
keepalive = 5
timeout = 30
graceful_timeout = 20
# the request line and headers are small: a webhook's are well under these
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
accesslog = None  # one structured line per event comes from the app itself
errorlog = "-"
logconfig_dict = dict_config()  # JSON lines, audit lines at INFO whatever LOG_LEVEL says
# each worker builds its own engine and broker connection after the fork
preload_app = False
# gunicorn 25.1+ opens a control socket for `gunicornc` by default, at one path per user ($HOME/.gunicorn/gunicorn.ctl)
# that every gunicorn of that user takes over from the last, served by a thread the master stops and restarts around
# each worker fork. Nothing here uses it: off (older gunicorns ignore the name).
control_socket_disable = True

BODY_READ_TIMEOUT = env_number("BODY_READ_TIMEOUT", "5", float, 0.1, 3600)


def on_starting(server):
    """Multi-process Prometheus metrics: start each run with an empty directory. One session key per
    server, shared by its workers (inherited through the environment), unless SESSION_SECRET is set."""
    os.environ.setdefault("SESSION_SECRET", secrets.token_urlsafe(32))
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)


def pre_request(worker, req):
    """The head is in: a body that trickles in gets BODY_READ_TIMEOUT per read, then the read fails (a 408)."""
    end_head(req, BODY_READ_TIMEOUT)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
