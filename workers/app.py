"""Entry module for `dramatiq workers.app`: builds the runtime from the environment."""
from coursepipe.runtime import init_runtime
from coursepipe.settings import Settings

runtime = init_runtime(Settings.from_env())
broker = runtime.broker
