"""The ingress's gunicorn settings, for `gunicorn -c gunicorn.conf.py ingress.wsgi:app` from a checkout: they are
ingress/gunicorn_conf.py's (`-c python:ingress.gunicorn_conf`, which an installed package has as well)."""
from ingress.gunicorn_conf import *  # noqa: F401,F403
