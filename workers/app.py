"""Entry module for `dramatiq workers.app`: builds the runtime from the environment."""
import dramatiq

from coursepipe.logs import configure_logging
from coursepipe.runtime import init_runtime
from coursepipe.settings import Settings

# An idle consumer backs off up to the worker timeout before it polls Redis again: Dramatiq's 1 s
# default puts up to a second between an acknowledged webhook and its fulfilment on a quiet system.
# The `dramatiq` command line has no option for it, so the default is lowered here (idle cost: a
# few Redis calls per second per queue).
IDLE_POLL_MS = 100
dramatiq.Worker.__init__.__kwdefaults__["worker_timeout"] = IDLE_POLL_MS

configure_logging()
runtime = init_runtime(Settings.from_env())
broker = runtime.broker
