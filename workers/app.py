"""Entry module for `dramatiq workers.app`: builds the runtime from the environment and refuses a database that
is not at the migration head (the error names `coursepipe db upgrade`), as every command does."""
from coursepipe.logs import configure_logging
from coursepipe.runtime import init_runtime
from coursepipe.settings import Settings
from db.migrate import refuse_if_behind

configure_logging()
runtime = init_runtime(Settings.from_env())
refuse_if_behind(runtime.db.engine)
broker = runtime.broker
