"""The SQL metadata and the tables of resources, their versions and search indexes."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per applied migration step (`fhirvault.store.migrations.STEPS`), by id.
schema_migrations = sa.Table(
    "schema_migrations", metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("applied_at", sa.BigInteger, nullable=False),
)

# Current state of every resource, one row per (type, id).
resources = sa.Table(
    "resources", metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, nullable=False),
    sa.Column("last_updated", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("content", sa.Text, nullable=True),
    sa.Column("blob_id", sa.String(64), nullable=True),
    sa.Index("ix_resources_type_updated", "resource_type", "last_updated"),
)

# Every version ever written; never updated, removed only by expunge.
resource_versions = sa.Table(
    "resource_versions", metadata,
    sa.Column("resource_type", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("version_id", sa.Integer, primary_key=True),
    sa.Column("last_updated", sa.BigInteger, nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("content", sa.Text, nullable=True),
    sa.Column("blob_id", sa.String(64), nullable=True),
    sa.Index("ix_versions_type_updated", "resource_type", "last_updated"),
    sa.Index("ix_versions_updated", "last_updated"),
)

search_tokens = sa.Table(
    "search_tokens", metadata,
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("param", sa.String(64), nullable=False),
    sa.Column("system", sa.String(512), nullable=True),
    sa.Column("value", sa.String(512), nullable=False),
    sa.Index("ix_tokens_lookup", "resource_type", "param", "value"),
    sa.Index("ix_tokens_owner", "resource_type", "id"),  # as step 0001 made it; step 0013 drops it
)

search_refs = sa.Table(
    "search_refs", metadata,
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("id", sa.String(64), nullable=False),
    sa.Column("param", sa.String(64), nullable=False),
    sa.Column("target", sa.String(160), nullable=False),
    sa.Index("ix_refs_lookup", "resource_type", "param", "target"),
    sa.Index("ix_refs_owner", "resource_type", "id"),  # as step 0001 made it; step 0013 drops it
)
