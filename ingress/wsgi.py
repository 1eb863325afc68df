"""WSGI entry for gunicorn: `gunicorn ingress.wsgi:app` (settings from the environment).

An entry module, like `workers.app`: it builds the runtime through the composition root.
"""
from coursepipe.runtime import init_runtime
from coursepipe.settings import INGRESS_SECRETS, Settings
from ingress.app import create_app

settings = Settings.from_env().require(*INGRESS_SECRETS)
app = create_app(settings, runtime=init_runtime(settings))
