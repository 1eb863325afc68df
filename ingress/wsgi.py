"""WSGI entry for gunicorn: `gunicorn ingress.wsgi:app` (settings from the environment).

An entry module, like `workers.app`: it builds the runtime through the composition root, and refuses a
database that is not at the migration head (the error names `coursepipe db upgrade`), as every command does.
"""
from coursepipe.runtime import init_runtime
from coursepipe.settings import INGRESS_SECRETS, Settings
from db.migrate import refuse_if_behind
from ingress.app import create_app

settings = Settings.from_env().require(*INGRESS_SECRETS)
runtime = init_runtime(settings)
refuse_if_behind(runtime.db.engine)
app = create_app(settings, runtime=runtime)
