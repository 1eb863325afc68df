"""Queue names, in one place: the broker's set-up and the actors agree on them."""

INBOX_QUEUE = "inbox"  # inbox rows to run
OUTBOX_QUEUE = "outbox"  # mail and platform callbacks out
JOBS_QUEUE = "maintenance"  # the scheduler's jobs
CATALOG_QUEUE = "catalog"  # publishing to Stripe
