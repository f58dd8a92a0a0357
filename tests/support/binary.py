"""Binary test support: the storage modes every Binary test runs in, servers per mode, and looks into a
server's database and storage directory (to prove nothing was left behind)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import FhirApi, ServerProcess

# The one list of storage modes the Binary tests are parametrized over.
STORAGE_MODES = ["inline", "database", "filesystem"]
DATABASES = ["sqlite", "postgres"]

_servers: dict[tuple[str, str], ServerProcess] = {}


@pytest.fixture(scope="session", params=STORAGE_MODES)
def storage_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session", params=DATABASES)
def database(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def shared_binary_server(server_factory: Callable[..., ServerProcess], storage_mode: str,
                         database: str) -> ServerProcess:
    """The server for (storage mode, database) with default settings, started once per session."""
    key = (storage_mode, database)
    if key not in _servers:
        _servers[key] = server_factory(database, storage_mode=storage_mode)
    return _servers[key]


@pytest.fixture(scope="session")
def binary_server(storage_mode: str, database: str, server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """One server per (storage mode, database), shared by every Binary test file."""
    return shared_binary_server(server_factory, storage_mode, database)


@pytest.fixture
def bapi(binary_server: ServerProcess) -> Iterator[FhirApi]:
    with binary_server.api() as client:
        yield client


# -- looking into a server ------------------------------------------------------------------------
def _sql(server: ServerProcess, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    url = server.env.get("FHIRVAULT_DATABASE_URL")
    if url and url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
            return list(conn.execute(query.replace("?", "%s"), params).fetchall())
    with sqlite3.connect(server.data_dir / "fhirvault.db") as conn:
        return list(conn.execute(query, params).fetchall())


def blob_rows(server: ServerProcess) -> list[tuple[str, str, str]]:
    """(id, state, storage_key) of every registered blob."""
    return [(r[0], r[1], r[2]) for r in _sql(server, "SELECT id, state, storage_key FROM blobs ORDER BY id")]


def blob_ids_of(server: ServerProcess, binary_id: str) -> list[str | None]:
    """The blob id of each version of Binary/binary_id, oldest first."""
    rows = _sql(server, "SELECT blob_id FROM resource_versions WHERE resource_type = 'Binary' AND id = ? "
                        "ORDER BY version_id", (binary_id,))
    return [r[0] for r in rows]


def binary_count(server: ServerProcess) -> int:
    return int(_sql(server, "SELECT count(*) FROM resource_versions WHERE resource_type = 'Binary'")[0][0])


def chunk_keys(server: ServerProcess) -> set[str]:
    return {r[0] for r in _sql(server, "SELECT DISTINCT blob_key FROM blob_chunks")}


def storage_files(server: ServerProcess) -> list[Path]:
    """Every file under the server's storage directory, temporary files included."""
    root = Path(server.env.get("FHIRVAULT_STORAGE_DIR") or server.data_dir / "blobs")
    if not root.is_dir():
        return []
    return sorted(Path(d) / f for d, _, files in os.walk(root) for f in files)


def stored_keys(server: ServerProcess) -> set[str]:
    """Keys that have bytes in the server's blob storage (files or chunks), whatever the mode."""
    return {p.name for p in storage_files(server)} | chunk_keys(server)


def peak_rss_bytes(server: ServerProcess) -> int:
    """The server process's high-water mark of resident memory (VmHWM)."""
    assert server.proc is not None
    with open(f"/proc/{server.proc.pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll until the server has done something asynchronous (not a timing assertion: only a deadline)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.05)


# -- content ----------------------------------------------------------------------------------------
def pseudo_random(size: int, seed: int = 1) -> bytes:
    """Reproducible incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:size])


def generated_chunks(total: int, chunk: int = 1024 * 1024, seed: int = 7) -> Iterator[bytes]:
    """`total` bytes in chunks, never all in memory: a block pattern varied by a counter."""
    block = pseudo_random(chunk, seed)
    sent = 0
    n = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        prefix = n.to_bytes(8, "big")
        piece = prefix[: len(piece)] + piece[len(prefix):]
        yield piece
        sent += len(piece)
        n += 1
