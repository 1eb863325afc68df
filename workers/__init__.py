"""Broker set-up and thin Dramatiq actors: take an id, open one transaction, call one `tasks/` function."""
