"""Several server processes on one embedded SQLite database: `fhirvault serve` runs one per core by
default, and writes arriving at different processes at the same time stay correct."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import FhirApi, ServerProcess, settings_env

CLIENTS = 12


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def connections_by_worker(server: ServerProcess) -> dict[int, int]:
    """How many established connections to the server's port each server process holds."""
    established = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == server.port and fields[3] == "01":
                established.add(fields[9])
    return {pid: len(_socket_inodes(pid) & established) for pid in server.pids()}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("workers"), settings_env(workers=2)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def spread_clients(two_workers: ServerProcess) -> Iterator[list[FhirApi]]:
    """Clients whose keep-alive connections are held by both worker processes (connections are opened
    one by one until both hold some: which process accepts one is the kernel's choice)."""
    clients: list[FhirApi] = []
    try:
        while len(clients) < 64:
            client = two_workers.api()
            clients.append(client)
            assert client.get("/metadata").status_code == 200  # opens the connection
            held = connections_by_worker(two_workers)
            if len(clients) >= CLIENTS and sum(1 for n in held.values() if n) >= 2:
                break
        held = connections_by_worker(two_workers)
        assert sum(1 for n in held.values() if n) >= 2, f"one process took every connection: {held}"
        yield clients
    finally:
        for client in clients:
            client.close()


def _together(clients: list[FhirApi], work: Callable[[FhirApi, int], Any]) -> list[Any]:
    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(work, clients, range(len(clients))))


def test_serve_runs_one_process_per_core_by_default(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, {}, workers=None).start()
    try:
        workers = [pid for pid in server.pids() if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        cores = len(os.sched_getaffinity(0))
        assert len(workers) == (cores if cores > 1 else 0)
        with server.api() as api:
            assert api.post("/Patient", json={"resourceType": "Patient"}).status_code == 201
    finally:
        server.stop()


def test_workers_option_overrides_the_default(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, settings_env(workers=1)).start()
    try:
        assert server.pids() == [server.proc.pid]  # type: ignore[union-attr]
    finally:
        server.stop()


def test_concurrent_creates_from_both_workers_all_land(two_workers: ServerProcess,
                                                      spread_clients: list[FhirApi]) -> None:
    tag = uuid.uuid4().hex
    per_client = 8

    def create(api: FhirApi, n: int) -> list[str]:
        ids = []
        for k in range(per_client):
            r = api.post("/Patient", json={"resourceType": "Patient", "identifier": [
                {"system": "urn:test:workers", "value": f"{tag}-{n}-{k}"}]})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        return ids

    ids = [i for chunk in _together(spread_clients, create) for i in chunk]
    assert len(set(ids)) == len(spread_clients) * per_client
    with two_workers.api() as api:
        for rid in ids[:: max(1, len(ids) // 10)]:
            got = api.get(f"/Patient/{rid}")
            assert got.status_code == 200 and got.json()["identifier"][0]["value"].startswith(tag)
        page = api.get("/Patient", params={"identifier": f"urn:test:workers|{tag}-0-0", "_total": "accurate"}).json()
        assert page["total"] == 1


def test_concurrent_updates_of_one_resource_lose_no_version(two_workers: ServerProcess,
                                                           spread_clients: list[FhirApi]) -> None:
    rid = f"w-{uuid.uuid4().hex[:12]}"
    per_client = 5

    def update(api: FhirApi, n: int) -> list[int]:
        versions = []
        for k in range(per_client):
            r = api.put(f"/Observation/{rid}", json={
                "resourceType": "Observation", "id": rid, "status": "final",
                "code": {"text": f"{n}-{k}"}})
            assert r.status_code in (200, 201), r.text
            versions.append(int(r.json()["meta"]["versionId"]))
        return versions

    versions = [v for chunk in _together(spread_clients, update) for v in chunk]
    writes = len(spread_clients) * per_client
    # Every write got its own version: none was lost or overwritten by a writer in the other process.
    assert sorted(versions) == list(range(1, writes + 1))
    with two_workers.api() as api:
        assert api.get(f"/Observation/{rid}").json()["meta"]["versionId"] == str(writes)
        history = api.get(f"/Observation/{rid}/_history", params={"_count": writes}).json()
        assert history["total"] == writes
        assert sorted(int(e["response"]["etag"][3:-1]) for e in history["entry"]) == list(range(1, writes + 1))


def test_concurrent_binary_uploads_from_both_workers_read_back_whole(two_workers: ServerProcess,
                                                                    spread_clients: list[FhirApi]) -> None:
    def upload(api: FhirApi, n: int) -> list[tuple[str, bytes]]:
        out = []
        for k in range(3):
            content = os.urandom(100_000 + n * 1000 + k)  # over the inline limit: a blob each
            r = api.post("/Binary", content=content, headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text
            out.append((r.json()["id"], content))
        return out

    uploaded = [u for chunk in _together(spread_clients, upload) for u in chunk]
    with httpx.Client(headers=two_workers.auth_headers(), timeout=60) as client:
        for binary_id, content in uploaded:
            got = client.get(f"{two_workers.base}/Binary/{binary_id}")
            assert got.status_code == 200 and got.content == content
