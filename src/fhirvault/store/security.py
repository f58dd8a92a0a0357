"""Tables of the security module (OAuth2 clients, token signing keys) and the SQL of the signing keys."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

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

# Failed client authentications per presented client id (known or not, so the answer never tells
# which ids exist), keyed by the SHA-256 of the id. Counted before the secret is checked, in one
# atomic statement, so concurrent guesses are counted too. Supersedes clients.failed_auth_*.
auth_failures = sa.Table(
    "auth_failures", metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("since", sa.BigInteger, nullable=False),  # start of the current window, microseconds
    sa.Index("ix_auth_failures_since", "since"),
)

# Private signing keys (JWK JSON); every key verifies, the newest signs.
signing_keys = sa.Table(
    "signing_keys", metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("private_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)


@dataclass(frozen=True)
class SigningKeyRow:
    """One token signing key: its kid, the private JWK as JSON text, and its creation time (microseconds)."""

    kid: str
    private_jwk: str
    created_at: int


async def all_signing_keys(conn: AsyncConnection) -> list[SigningKeyRow]:
    """Every token signing key, oldest first."""
    t = signing_keys
    rows = (await conn.execute(sa.select(t).order_by(t.c.created_at, t.c.kid))).all()
    return [SigningKeyRow(r.kid, r.private_jwk, r.created_at) for r in rows]


async def insert_signing_key(conn: AsyncConnection, key: SigningKeyRow) -> None:
    """Add one token signing key."""
    await conn.execute(sa.insert(signing_keys).values(kid=key.kid, private_jwk=key.private_jwk,
                                                      created_at=key.created_at))


async def remove_signing_keys(conn: AsyncConnection, kids: list[str]) -> None:
    """Remove the token signing keys named in `kids` (none: nothing)."""
    if kids:
        await conn.execute(sa.delete(signing_keys).where(signing_keys.c.kid.in_(kids)))
