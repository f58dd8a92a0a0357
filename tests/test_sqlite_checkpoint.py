"""SQLite's WAL is copied back into the database (a checkpoint: two fsyncs, every page read back and
written again) by each server process every SQLITE_CHECKPOINT_SECONDS, beside the requests, and by a
commit only after SQLITE_WAL_AUTOCHECKPOINT frames rather than SQLite's default 1000 (store/database.py):
indexed creates, each dirtying some forty pages, no longer run a checkpoint every few dozen, nor copy the
pages of thousands of others before they answer."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhirvault.store.database import SQLITE_WAL_AUTOCHECKPOINT
from tests.support.server import ServerProcess

WAL_HEADER, FRAME_HEADER, PAGE = 32, 24, 4096


def _observation(i: int) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": f"Patient/p{i % 50}"}, "encounter": {"reference": f"Encounter/e{i % 70}"},
            "effectiveDateTime": f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}T10:00:00Z",
            "valueQuantity": {"value": 60 + i % 90, "unit": "/min", "system": "http://unitsofmeasure.org",
                              "code": "/min"}}


def test_wal_holds_more_than_the_default_window_between_checkpoints(
        server_factory: Callable[..., ServerProcess]) -> None:
    """Creates one at a time until the WAL holds well over 1000 frames: with SQLite's default window it
    would have been checkpointed and started over from its beginning (the file stays about 1000 frames
    long); the server's window lets it grow on."""
    assert SQLITE_WAL_AUTOCHECKPOINT >= 4000
    server = server_factory("sqlite", sqlite_checkpoint_seconds=3600)  # no checkpoint beside the requests
    wal = next(server.data_dir.glob("*.db")).with_name(next(server.data_dir.glob("*.db")).name + "-wal")
    default_window = WAL_HEADER + 1000 * (FRAME_HEADER + PAGE)
    with server.api() as api:
        for i in range(1500):
            r = api.post("/Observation", json=_observation(i))
            assert r.status_code == 201, r.text
            if wal.stat().st_size > 2 * default_window:
                break
    frames = (wal.stat().st_size - WAL_HEADER) // (FRAME_HEADER + PAGE)
    assert frames > 2000, f"{frames} frames after {i + 1} creates"
    assert frames < SQLITE_WAL_AUTOCHECKPOINT + 200, frames


def _wal_index(db: Path) -> tuple[int, int]:
    """(frames in the WAL, frames of them already copied into the database) from the WAL index (`-shm`),
    read without opening the database: the header's mxFrame and the checkpoint info's nBackfill."""
    shm = db.with_name(db.name + "-shm").read_bytes()[:100]
    return struct.unpack_from("<I", shm, 16)[0], struct.unpack_from("<I", shm, 96)[0]


def test_the_server_checkpoints_beside_the_requests(server_factory: Callable[..., ServerProcess]) -> None:
    """A few hundred frames of creates, far below the commit's window, are copied into the database by
    the server's own checkpoint within a moment of the last write (with SQLite's rule alone they would
    wait in the WAL until 10,000 frames)."""
    server = server_factory("sqlite", sqlite_checkpoint_seconds=0.2)
    db = next(server.data_dir.glob("*.db"))
    with server.api() as api:
        for i in range(40):
            r = api.post("/Observation", json=_observation(i))
            assert r.status_code == 201, r.text
    deadline = time.monotonic() + 10
    while (index := _wal_index(db))[1] < index[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    frames, copied = index
    assert frames > 0 and copied == frames, index
