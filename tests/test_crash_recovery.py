"""A server killed (SIGKILL) in the middle of concurrent uploads loses nothing it acknowledged, shows nothing
partial, and after the grace period its store holds exactly the committed blobs: no temporary file, no
incomplete multipart upload, no chunk row of an unfinished write is left over."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.leftovers import blob_rows, s3_client, stored_items
from tests.support.s3 import SeaweedS3, unique_bucket
from tests.support.server import ServerProcess

MiB = 1024 * 1024
CHUNK = 256 * 1024
COMPLETED = 8      # uploads that run to the end before the kill
HELD = 4           # uploads stopped mid-body until the server is dead
HELD_BYTES = 9 * MiB  # sent by each held upload before it stops: past one S3 multipart part (8 MiB)
GRACE = 2          # PENDING_BLOB_GRACE_SECONDS after the restart


def _body(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _chunks(data: bytes, hold: threading.Event | None) -> Iterator[bytes]:
    for offset in range(0, len(data), CHUNK):
        if hold is not None and offset >= HELD_BYTES:
            hold.wait()  # released only after the kill: this upload is mid-flight when the server dies
            return
        yield data[offset:offset + CHUNK]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pieces_in_flight(server: ServerProcess, mode: str, s3: Any) -> int:
    """How many held uploads have already left bytes in the store."""
    pending = set(blob_rows(server).get("pending", []))
    items = stored_items(server, mode, s3)
    if mode == "filesystem":
        return len({name[1:].split(".", 1)[0] for name in items["pieces"]} & pending)
    if mode == "database":
        return len(items["blobs"] & pending)
    return len(items["pieces"] & pending)


@pytest.mark.parametrize("mode", ["filesystem", "database", "s3"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigkill_mid_upload_leaves_committed_blobs_only(
        backend: str, mode: str, server_factory: Callable[..., ServerProcess], request: pytest.FixtureRequest) -> None:
    settings: dict[str, Any] = {"storage_mode": mode}
    s3 = None
    if mode == "s3":
        gateway: SeaweedS3 = request.getfixturevalue("seaweedfs")
        settings.update(gateway.settings(unique_bucket("crash")))
        s3 = s3_client(settings)
    server = server_factory(backend, **settings)
    headers = {**server.auth_headers(), "Content-Type": "application/octet-stream"}
    rng = random.Random(f"{backend}-{mode}")
    bodies = {n: _body(n, rng.randint(128 * 1024, 12 * MiB)) for n in range(COMPLETED)}
    bodies.update({COMPLETED + n: _body(COMPLETED + n, HELD_BYTES + MiB) for n in range(HELD)})
    hold = threading.Event()
    acknowledged: dict[str, bytes] = {}

    def upload(n: int) -> None:
        held = n >= COMPLETED
        try:
            answer = httpx.post(f"{server.base}/Binary", headers=headers, timeout=120,
                                content=_chunks(bodies[n], hold if held else None))
        except httpx.HTTPError:
            return  # the server died under it: not acknowledged
        if answer.status_code == 201:
            acknowledged[answer.headers["Location"].split("/Binary/")[1].split("/")[0]] = bodies[n]

    with ThreadPoolExecutor(COMPLETED + HELD) as pool:
        futures = [pool.submit(upload, n) for n in rng.sample(range(COMPLETED + HELD), COMPLETED + HELD)]
        try:
            _wait_for(lambda: len(acknowledged) == COMPLETED and _pieces_in_flight(server, mode, s3) == HELD,
                      "the completed uploads to be acknowledged and the held ones to have stored bytes")
            assert server.proc is not None
            server.proc.kill()
            server.proc.wait()
        finally:
            hold.set()
        for future in futures:
            future.result()
    assert len(acknowledged) == COMPLETED

    server.env.update({"FHIRVAULT_PENDING_BLOB_GRACE_SECONDS": str(GRACE), "FHIRVAULT_LEFTOVER_SCAN_SECONDS": "1"})
    server.start(timeout=120)
    with server.api() as api:
        lost = [bid for bid, data in acknowledged.items()
                if hashlib.sha256(api.get(f"/Binary/{bid}").content).digest() != hashlib.sha256(data).digest()]
        listed = api.get("/Binary", params={"_count": 100}).json()
        visible = {entry["fullUrl"].rsplit("/", 1)[1] for entry in listed.get("entry", [])}

        def only_committed_left() -> bool:
            rows = blob_rows(server)
            items = stored_items(server, mode, s3)
            return set(rows) == {"committed"} and items["pieces"] == set() \
                and items["blobs"] == set(rows["committed"])

        _wait_for(only_committed_left, "the sweeper to leave only committed blobs in the store")
        rows = blob_rows(server)
        items = stored_items(server, mode, s3)
        leftovers = len(items["blobs"] - set(rows["committed"])) + len(items["pieces"])
        print(f"\ncrash {backend}/{mode}: acknowledged={len(acknowledged)} lost={len(lost)} "
              f"partial={len(visible - set(acknowledged))} leftovers={leftovers}")
        assert lost == []
        assert visible == set(acknowledged)  # nothing partial, nothing unacknowledged is visible
        assert len(rows["committed"]) == COMPLETED
        assert leftovers == 0
        # and the survivors still read back after the sweep
        for bid, data in acknowledged.items():
            assert api.get(f"/Binary/{bid}").content == data
