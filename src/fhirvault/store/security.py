"""Tables of the security module: OAuth2 clients and the token signing keys."""

from __future__ import annotations

import sqlalchemy as sa

from fhirvault.store.schema import metadata

# One row per OAuth2 client. The secret is kept only as a slow hash. The failed-authentication
# counter lives here, beside the client, so that every node of a cluster counts the same failures.
clients = sa.Table(
    "clients", metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("secret_hash", sa.String(300), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("patient", sa.String(100), nullable=True),  # "Patient/123" for a patient-context client
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),  # microseconds since the epoch
    sa.Column("last_used_at", sa.BigInteger, nullable=True),  # last token issued
    sa.Column("failed_auth_count", sa.Integer, nullable=False, default=0),
    sa.Column("failed_auth_since", sa.BigInteger, nullable=True),  # start of the current failure window
)

# Private signing keys (JWK JSON); every key verifies, the newest signs.
signing_keys = sa.Table(
    "signing_keys", metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

