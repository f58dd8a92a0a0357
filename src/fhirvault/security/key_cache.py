"""The per-process cache of a key ring kept in the database (token signing keys, URL signing keys):
every node verifies with every key, and an unknown kid reloads the ring at most so often."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar


class HasKid(Protocol):
    """A key of a ring: its id, and when it was created (microseconds since the epoch)."""

    @property
    def kid(self) -> str:
        """The key id, as written in the `kid` header of what the key signs."""

    @property
    def created_at(self) -> int:
        """When the key was created, in microseconds since the epoch."""


K = TypeVar("K", bound=HasKid)


class KeyCache(Generic[K]):
    """The keys of one ring as last loaded by `load` (oldest first). `clock` gives seconds (any epoch,
    monotonic or wall); a kid not in the cache reloads it, but not more often than every
    `unknown_kid_reload` seconds, so that forged kids cannot turn every request into a query."""

    def __init__(self, load: Callable[[], Awaitable[list[K]]], unknown_kid_reload: float,
                 clock: Callable[[], float]) -> None:
        self._load = load
        self.unknown_kid_reload = unknown_kid_reload
        self.clock = clock
        self.keys: list[K] = []
        self._by_kid: dict[str, K] = {}
        self.loaded_at = float("-inf")

    async def reload(self) -> list[K]:
        """Read the ring again; returns its keys, oldest first."""
        keys = await self._load()
        self.keys = keys
        self._by_kid = {k.kid: k for k in keys}
        self.loaded_at = self.clock()
        return keys

    def age(self) -> float:
        """Seconds since the ring was last read (infinite before the first read)."""
        return self.clock() - self.loaded_at

    async def find(self, kid: str) -> K | None:
        """The key named `kid`, or None when the ring (reloaded if allowed) has none."""
        key = self._by_kid.get(kid)
        if key is None and self.age() > self.unknown_kid_reload:
            await self.reload()
            key = self._by_kid.get(kid)
        return key


def superseded(keys: Sequence[HasKid], before_us: int) -> list[str]:
    """The kids of the keys (oldest first) whose successor was created before `before_us`: nothing they
    signed after that successor took over can still be valid once that is longer ago than a token's or
    URL's lifetime, so they may be removed. The newest key is never among them."""
    return [older.kid for older, newer in zip(keys, keys[1:], strict=False) if newer.created_at < before_us]
