"""APScheduler jobs. Jobs only send messages; the work happens in actors."""
