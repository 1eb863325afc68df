"""The durable inbox, generic over event types: it imports no domain package.

- `store`: insert a verified event once per (source, event id); the ingress's one write.
- `context`: what a handler receives (`HandlerContext`: session, settings, remote answers, provide/lock).
- `runner`: claim a row → lock its subject → run the handler from the injected table → record the outcome.
- `parking`: events parked until another arrives, woken by what a unit of work provides; the sweeper's lists.
- `admin`: listing, replay and the admin view of rows.

Which handler runs for which (source, type) is decided by the composition root (`coursepipe.runtime`),
which builds the table from each domain package's `handlers.HANDLERS`.
"""
