"""Readiness: whether the parts a request needs (the database, the blob store) answer right now."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fhirvault.blobs.base import BlobStore
from fhirvault.errors import FhirVaultError
from fhirvault.store.database import Database

# Seconds each part gets to answer; a load balancer's own probe timeout is usually a few seconds.
PROBE_TIMEOUT = 2.0


class Readiness:
    """Probes the database and the blob store concurrently, each bounded by PROBE_TIMEOUT."""

    def __init__(self, db: Database, store: BlobStore | None) -> None:
        self.db = db
        self.store = store
        self.stopping = False

    async def failures(self) -> dict[str, str]:
        """{part: what is wrong} for every part that does not answer; empty when ready.
        Parts: "database", "blob store", and "server" while it shuts down."""
        probes: dict[str, Callable[[], Awaitable[None]]] = {"database": self.db.ping}
        if self.store is not None:
            probes["blob store"] = self.store.probe
        results = await asyncio.gather(*(_bounded(probe) for probe in probes.values()))
        found = {part: problem for part, problem in zip(probes, results, strict=True) if problem}
        if self.stopping:
            found["server"] = "shutting down"
        return found


async def _bounded(probe: Callable[[], Awaitable[None]]) -> str | None:
    try:
        await asyncio.wait_for(probe(), PROBE_TIMEOUT)
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT:g} s"
    except FhirVaultError as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - whatever breaks a probe means "not ready", named
        return type(exc).__name__
    return None
