"""`dramatiq tests.workers.worker_app`: the real worker entry, wired with the runner tests' handlers too."""
import coursepipe.runtime
import tests.workers.support

coursepipe.runtime.HANDLER_MODULES = (*coursepipe.runtime.HANDLER_MODULES, tests.workers.support)

from workers.app import broker, runtime  # noqa: E402,F401
