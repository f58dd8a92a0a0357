"""The table of HMAC keys that sign storage URLs, shared by every node through the database."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.store.schema import metadata

# One row per key; the newest signs, all verify. Rows are removed only once no URL they signed
# can still be valid.
url_signing_keys = sa.Table(
    "url_signing_keys", metadata,
    sa.Column("kid", sa.String(32), primary_key=True),
    sa.Column("secret", sa.String(128), nullable=False),  # base64url of 32 random bytes
    sa.Column("created_at", sa.BigInteger, nullable=False),  # microseconds since the epoch
)


@dataclass(frozen=True)
class UrlSigningKey:
    """One key of the URL signing ring: a short kid carried in signed URLs, a 32-byte HMAC secret, and its
    creation time (microseconds since the epoch)."""

    kid: str
    secret: bytes
    created_at: int


def new_key(created_at: int) -> UrlSigningKey:
    """A new random URL signing key created at `created_at` (microseconds since the epoch)."""
    return UrlSigningKey(secrets.token_hex(6), secrets.token_bytes(32), created_at)


async def insert_key(conn: AsyncConnection, key: UrlSigningKey) -> None:
    """Stores `key` in the caller's transaction `conn` (the secret base64-encoded)."""
    await conn.execute(sa.insert(url_signing_keys).values(
        kid=key.kid, secret=base64.urlsafe_b64encode(key.secret).decode("ascii"), created_at=key.created_at))


async def all_keys(conn: AsyncConnection) -> list[UrlSigningKey]:
    """Every key, oldest first."""
    t = url_signing_keys
    rows = (await conn.execute(sa.select(t).order_by(t.c.created_at, t.c.kid))).all()
    return [UrlSigningKey(r.kid, base64.urlsafe_b64decode(r.secret), r.created_at) for r in rows]


async def remove_keys(conn: AsyncConnection, kids: list[str]) -> None:
    """Deletes the keys named in `kids` in the caller's transaction `conn`; an empty list does nothing."""
    if kids:
        await conn.execute(sa.delete(url_signing_keys).where(url_signing_keys.c.kid.in_(kids)))

