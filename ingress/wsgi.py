"""WSGI entry for gunicorn: `gunicorn ingress.wsgi:app` (settings from the environment)."""
from ingress.app import create_app

app = create_app()
