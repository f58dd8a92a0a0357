"""The table of the durable job queue (the queue's logic lives in `fhirvault.jobs.queue`)."""

from __future__ import annotations

import sqlalchemy as sa

from fhirvault.store.schema import metadata

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(64), nullable=False),
    # What the job is about (e.g. `Media/123`), so its jobs can be listed; optional.
    sa.Column("subject", sa.String(160), nullable=True),
    # Two active jobs with the same kind and key are never queued; the second enqueue returns the first.
    sa.Column("dedupe_key", sa.String(512), nullable=True),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("run_after", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Column("lease_until", sa.BigInteger, nullable=True),  # a running job past this is taken over
    sa.Column("claim_token", sa.String(36), nullable=True),  # which claim may finish the job
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("result", sa.Text, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Index("ix_jobs_ready", "state", "run_after"),
    sa.Index("ix_jobs_subject", "subject"),
    sa.Index("ix_jobs_dedupe", "kind", "dedupe_key"),
)
