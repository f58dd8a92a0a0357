"""Signed storage URLs: minting, parsing and constant-time verification with rotatable keys in the database."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fhirvault.errors import Forbidden, Gone
from fhirvault.fhir.r4 import is_valid_id, whole_number
from fhirvault.security.key_cache import KeyCache, superseded
from fhirvault.store.database import Database
from fhirvault.store.url_signing_keys import UrlSigningKey, all_keys, insert_key, new_key, remove_keys

# Which key signs is re-read this often, so a rotation made on another node reaches every node.
KEY_REFRESH_SECONDS = 60.0
# A URL naming an unknown kid makes us look in the database again, but not more often than this,
# so that forged kids cannot turn every request into a query.
UNKNOWN_KID_RELOAD_SECONDS = 2.0

STORAGE_PATH = "/storage/"
MINTED_CACHE_SIZE = 50_000
_SIG_LABEL = b"fhirvault-storage-v1"
# Query marker of a URL minted for a versioned reference. It is not signed: it grants nothing, it only
# tells the server, when a client writes the URL back into an Attachment, to keep the version it names.
PINNED_PARAM = "pinned"


@dataclass(frozen=True)
class StorageUrlParts:
    """The parts of one of our storage URLs, as found in it (not yet verified)."""

    binary_id: str
    version_id: int
    expires: int | None
    kid: str | None
    sig: str | None
    pinned: bool = False  # minted for a versioned reference (`Binary/1/_history/2`), see SignedUrl.mint_with


def signature(secret: bytes, binary_id: str, version_id: int, expires: int, kid: str) -> str:
    """HMAC-SHA256 over the canonical parts; never the host or the method, so HEAD, GET and any
    node behind any load balancer agree. base64url without padding."""
    message = b"\n".join([_SIG_LABEL, binary_id.encode(), str(version_id).encode(), str(expires).encode(),
                          kid.encode()])
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def rounded_expiry(now: float, ttl: int, window: int) -> int:
    """now + ttl rounded up to the next multiple of `window`: every URL minted in one window for one
    version is the same string, so browsers can cache what it names."""
    return int(math.ceil((now + ttl) / window) * window)


class SignedUrl:
    """Mints and checks `{PUBLIC_BASE_URL}/storage/{binary-id}/{version-id}?exp=&kid=&sig=` URLs."""

    def __init__(self, db: Database, public_base_url: str, ttl: int, window: int,
                 clock: Callable[[], float] = time.time, also_accepted: tuple[str, ...] = ()) -> None:
        self.db = db
        self.prefix = public_base_url.rstrip("/") + STORAGE_PATH
        # Earlier bases of our storage URLs (e.g. PUBLIC_BASE_URL before STORAGE_PUBLIC_BASE_URL was
        # set) are still recognized as ours when a client sends one back.
        self.prefixes = (self.prefix, *(b.rstrip("/") + STORAGE_PATH for b in also_accepted))
        self.ttl = ttl
        self.window = max(1, window)
        self.clock = clock
        self._keys: KeyCache[UrlSigningKey] = KeyCache(self._load, UNKNOWN_KID_RELOAD_SECONDS, clock)
        self._minted: dict[tuple[str, str, int, int, bool], str] = {}

    # -- keys -----------------------------------------------------------------------------------
    async def _load(self) -> list[UrlSigningKey]:
        async with self.db.read() as conn:
            keys = await all_keys(conn)
        if not keys:
            # Every key was removed by hand: make one (concurrent nodes may each make one; all verify).
            key = new_key(int(self.clock() * 1_000_000))
            async with self.db.write() as conn:
                await insert_key(conn, key)
            keys = [key]
        return keys

    async def signing_key(self) -> UrlSigningKey:
        """The newest key that every node has had time to learn (older than the refresh interval);
        the oldest key while none is that old (a fresh database)."""
        keys = self._keys.keys
        if not keys or self._keys.age() > KEY_REFRESH_SECONDS:
            keys = await self._keys.reload()
        settled_before = (self.clock() - KEY_REFRESH_SECONDS) * 1_000_000
        settled = [k for k in keys if k.created_at <= settled_before]
        return settled[-1] if settled else keys[0]

    async def rotate(self) -> tuple[str, list[str]]:
        """Adds a new key (it starts signing once every node has had time to learn it) and removes keys
        superseded longer ago than any URL they signed can live. Returns the new kid and the removed kids."""
        now_us = int(self.clock() * 1_000_000)
        key = new_key(now_us)
        keep_us = int((self.ttl + self.window + 2 * KEY_REFRESH_SECONDS) * 1_000_000)
        async with self.db.write() as conn:
            # A key signs until the next one settles (created + refresh); its URLs live TTL + window more.
            removed = superseded(await all_keys(conn), now_us - keep_us)
            await remove_keys(conn, removed)
            await insert_key(conn, key)
        await self._keys.reload()
        return key.kid, removed

    # -- minting --------------------------------------------------------------------------------
    async def mint(self, binary_id: str, version_id: int) -> str:
        """The signed storage URL for one version of a Binary with the current signing key; valid until the
        end of the current window (TTL rounded up to the window, seconds), so repeated reads get
        the same URL."""
        return self.mint_with(await self.signing_key(), binary_id, version_id)

    def expiry(self) -> int:
        """The expiry (seconds since the epoch) of a URL minted now: now + TTL, rounded up to the window."""
        return rounded_expiry(self.clock(), self.ttl, self.window)

    def mint_with(self, key: UrlSigningKey, binary_id: str, version_id: int, pinned: bool = False,
                  expires: int | None = None) -> str:
        """The URL for one version with a key already at hand (minting many without awaiting each).
        `pinned` marks a URL that stands for `Binary/{id}/_history/{version}` rather than `Binary/{id}`;
        `expires` is `expiry()` taken once for a batch (None: taken now)."""
        if expires is None:
            expires = self.expiry()
        memo = (key.kid, binary_id, version_id, expires, pinned)
        url = self._minted.get(memo)
        if url is None:
            # URLs are deterministic within a window; remembering them spares an HMAC per repeated read.
            if len(self._minted) >= MINTED_CACHE_SIZE:
                self._minted.clear()
            sig = signature(key.secret, binary_id, version_id, expires, key.kid)
            marker = f"&{PINNED_PARAM}=1" if pinned else ""
            url = f"{self.prefix}{binary_id}/{version_id}?exp={expires}&kid={key.kid}&sig={sig}{marker}"
            self._minted[memo] = url
        return url

    # -- parsing and verifying ------------------------------------------------------------------
    def parse(self, url: str) -> StorageUrlParts | None:
        """The parts of `url` when it is one of our storage URLs (whatever its signature or expiry),
        else None."""
        prefix = next((p for p in self.prefixes if url.startswith(p)), None)
        if prefix is None:
            return None
        split = urlsplit(url)
        rest = url[len(prefix):].split("?", 1)[0].split("#", 1)[0]
        segments = rest.split("/")
        if len(segments) != 2 or not is_valid_id(segments[0]) or whole_number(segments[1]) is None:
            return None
        query = {k: v[0] for k, v in parse_qs(split.query).items() if v}
        return parts_from(segments[0], segments[1], query)

    async def verify(self, parts: StorageUrlParts, *, allow_expired: bool = False) -> int:
        """Seconds the URL has left (0 when expired and `allow_expired`). Forbidden when the signature is
        missing or wrong, Gone once it has expired. The signature is compared in constant time."""
        if parts.expires is None or not parts.kid or not parts.sig:
            raise Forbidden("This storage URL carries no valid signature (exp, kid and sig are needed)")
        key = await self._keys.find(parts.kid)
        # Compare against something even for an unknown kid, so timing tells nothing about kids either.
        expected = signature(key.secret if key else b"\0" * 32, parts.binary_id, parts.version_id, parts.expires,
                             parts.kid)
        if not hmac.compare_digest(expected.encode("ascii"), parts.sig.encode("ascii", "replace")) or key is None:
            raise Forbidden("This storage URL's signature is not valid")
        left = int(math.floor(parts.expires - self.clock()))
        if left <= 0:
            if allow_expired:
                return 0
            raise Gone("This storage URL has expired; read the resource again for a fresh URL", code="expired")
        return left


def parts_from(binary_id: str, version: str, query: Mapping[str, str]) -> StorageUrlParts | None:
    """StorageUrlParts from a request's path segments and query; None when the path is not one of ours."""
    version_id = whole_number(version)
    if not is_valid_id(binary_id) or version_id is None:
        return None
    return StorageUrlParts(binary_id, version_id, whole_number(query.get("exp") or ""),
                           query.get("kid"), query.get("sig"), query.get(PINNED_PARAM) == "1")
