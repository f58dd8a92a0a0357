"""Background work: a durable job queue in the database, its workers, and the external-URL fetcher."""
