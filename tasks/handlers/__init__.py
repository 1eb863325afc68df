"""Importing this package registers every inbox handler (see `tasks.inbox.handles`).

One module per concern; each registers its (source, type) pairs on import.
"""
