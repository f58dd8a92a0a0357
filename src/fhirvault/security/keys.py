"""Token signing keys kept in the database: every node verifies with all of them, the newest signs."""

from __future__ import annotations

import json
import secrets
import time

import sqlalchemy as sa
from joserfc.jwk import ECKey
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.clock import now_us
from fhirvault.store.database import Database
from fhirvault.store.security import signing_keys

ALGORITHM = "ES256"
# A token naming an unknown kid makes us look in the database again, but not more often than this,
# so that forged kids cannot turn every request into a query.
RELOAD_INTERVAL = 5.0


def _new_key() -> ECKey:
    key = ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(8), "alg": ALGORITHM,
                                                   "use": "sig"}, private=True)
    return key


class KeyRing:
    """The signing keys, cached per process; the database is the source of truth."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._keys: dict[str, ECKey] = {}
        self._loaded_at = float("-inf")

    async def _load(self, conn: AsyncConnection) -> list[tuple[int, ECKey]]:
        rows = (await conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at))).all()
        out = [(r.created_at, ECKey.import_key(json.loads(r.private_jwk))) for r in rows]
        self._keys = {str(k.kid): k for _, k in out}
        self._loaded_at = time.monotonic()
        return out

    async def signing_key(self) -> ECKey:
        """The newest key, read from the database each time (tokens are issued rarely), created if none."""
        async with self.db.write() as conn:
            keys = await self._load(conn)
            if keys:
                return keys[-1][1]
            key = _new_key()
            await self._insert(conn, key)
        self._keys[str(key.kid)] = key
        return key

    async def verification_key(self, kid: str) -> ECKey | None:
        key = self._keys.get(kid)
        if key is None and time.monotonic() - self._loaded_at > RELOAD_INTERVAL:
            async with self.db.read() as conn:
                await self._load(conn)
            key = self._keys.get(kid)
        return key

    async def _insert(self, conn: AsyncConnection, key: ECKey) -> None:
        await conn.execute(sa.insert(signing_keys).values(
            kid=str(key.kid), private_jwk=json.dumps(key.as_dict(private=True)), created_at=now_us()))

    async def rotate(self, keep_seconds: int) -> tuple[str, list[str]]:
        """Adds a new signing key; removes keys superseded more than `keep_seconds` ago (no token they
        signed can still be valid). Returns the new kid and the removed kids."""
        key = _new_key()
        removed: list[str] = []
        async with self.db.write() as conn:
            rows = (await conn.execute(sa.select(signing_keys.c.kid, signing_keys.c.created_at)
                                       .order_by(signing_keys.c.created_at))).all()
            cutoff = now_us() - keep_seconds * 1_000_000
            for older, newer in zip(rows, rows[1:], strict=False):
                if newer.created_at < cutoff:
                    removed.append(older.kid)
            if removed:
                await conn.execute(sa.delete(signing_keys).where(signing_keys.c.kid.in_(removed)))
            await self._insert(conn, key)
        return str(key.kid), removed
