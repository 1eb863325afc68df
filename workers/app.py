"""Entry module for `dramatiq workers.app`: builds the runtime from the environment."""
from coursepipe.logs import configure_logging
from coursepipe.runtime import init_runtime
from coursepipe.settings import Settings

configure_logging()
runtime = init_runtime(Settings.from_env())
broker = runtime.broker
