"""Importing this package registers every inbox handler (see `tasks.inbox.handles`).

One module per concern; each registers its (source, type) pairs on import.
"""
from tasks.handlers import stripe_payments  # noqa: F401,E402
from tasks.handlers import platform  # noqa: F401,E402
from tasks.handlers import stripe_catalog  # noqa: F401,E402
