"""Actors run by the scheduler's jobs (registered on import by `declare_actors`)."""
