"""Token signing keys kept in the database: every node verifies with all of them, the newest signs."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

from joserfc.jwk import ECKey

from fhirvault.clock import now_us
from fhirvault.security.key_cache import KeyCache, superseded
from fhirvault.store.database import Database
from fhirvault.store.security import SigningKeyRow, all_signing_keys, insert_signing_key, remove_signing_keys

ALGORITHM = "ES256"
# A token naming an unknown kid makes us look in the database again, but not more often than this,
# so that forged kids cannot turn every request into a query.
RELOAD_INTERVAL = 5.0


@dataclass(frozen=True)
class TokenKey:
    """A signing key of the ring: kid, creation time (microseconds since the epoch), the EC P-256 key."""

    kid: str
    created_at: int
    key: ECKey


def _new_key() -> ECKey:
    key = ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(8), "alg": ALGORITHM,
                                                   "use": "sig"}, private=True)
    return key


def _row(key: ECKey) -> SigningKeyRow:
    return SigningKeyRow(str(key.kid), json.dumps(key.as_dict(private=True)), now_us())


class KeyRing:
    """The token signing keys, cached per process; the database is the source of truth."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: KeyCache[TokenKey] = KeyCache(self._load, RELOAD_INTERVAL, time.monotonic)

    async def _load(self) -> list[TokenKey]:
        async with self.db.read() as conn:
            rows = await all_signing_keys(conn)
        return [TokenKey(r.kid, r.created_at, ECKey.import_key(json.loads(r.private_jwk))) for r in rows]

    async def signing_key(self) -> ECKey:
        """The newest key, read from the database each time (tokens are issued rarely), created if none."""
        keys = await self._cache.reload()
        if keys:
            return keys[-1].key
        async with self.db.write() as conn:
            if not await all_signing_keys(conn):  # under the write lock: one node makes the first key
                await insert_signing_key(conn, _row(_new_key()))
        return (await self._cache.reload())[-1].key

    async def verification_key(self, kid: str) -> ECKey | None:
        """The key named `kid` (reloading the ring at most every RELOAD_INTERVAL seconds), or None."""
        found = await self._cache.find(kid)
        return found.key if found else None

    async def rotate(self, keep_seconds: int) -> tuple[str, list[str]]:
        """Adds a new signing key; removes keys superseded more than `keep_seconds` ago (no token they
        signed can still be valid). Returns the new kid and the removed kids."""
        row = _row(_new_key())
        async with self.db.write() as conn:
            removed = superseded(await all_signing_keys(conn), now_us() - keep_seconds * 1_000_000)
            await remove_signing_keys(conn, removed)
            await insert_signing_key(conn, row)
        return row.kid, removed
