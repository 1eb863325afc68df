"""`dramatiq tests.workers.worker_app`: the real worker entry plus the runner tests' handlers."""
import tests.workers.support  # noqa: F401
from workers.app import broker, runtime  # noqa: F401
