"""Malware scanning figures: clamd scan throughput, and upload latency with scanning on vs off.

1. Throughput: a clamd started here (tests/support/clamd.py: a private tiny signature database) gets the
   same incompressible file through fhirvault's INSTREAM client (`ClamdScanner`), several times; printed
   as MB/s of wall time and clamd's CPU-seconds per 100 MB, beside SHA-256 hashing of the same bytes in this
   process as a CPU-speed reference measured in the same run. (A real signature database makes clamd
   slower per byte than this tiny one; the protocol and streaming cost are what this measures.)
2. Upload latency: two fhirvault servers on SQLite, one with SCAN_MODE=off and one with SCAN_MODE=block
   (same clamd), get the same uploads, interleaved so machine load hits both alike; the median and p90
   of `POST /Binary` are printed for each size with the ratio on/off (target: unchanged, since scanning
   runs in the background), and the time from upload to a `clean` verdict on the scanning server.

Prints figures; asserts nothing. Run: .venv/bin/python bench/scan.py [--mib 32] [--uploads 40]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fhirvault.jobs.clamd import ClamdScanner  # noqa: E402
from tests.support.clamd import Clamd  # noqa: E402
from tests.support.server import ServerProcess, settings_env  # noqa: E402

MiB = 1024 * 1024
PIECE = 1 * MiB


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), PIECE):
        yield data[offset:offset + PIECE]


def throughput(clamd: Clamd, data: bytes, rounds: int) -> None:
    assert clamd.proc is not None
    scanner = ClamdScanner(clamd.unix_url, timeout=600)
    walls, cpus = [], []
    for _ in range(rounds):
        cpu0, t0 = cpu_seconds(clamd.proc.pid), time.perf_counter()
        verdict = asyncio.run(scanner.scan(_pieces(data)))
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds(clamd.proc.pid) - cpu0)
        assert not verdict.infected and not verdict.too_large, verdict
    t0 = time.perf_counter()
    for _ in range(rounds):
        hashlib.sha256(data).digest()
    hash_wall = (time.perf_counter() - t0) / rounds
    mb = len(data) / 1e6
    best = min(walls)
    print(f"scan throughput, {len(data) // MiB} MiB x {rounds} through clamd (unix socket):")
    print(f"  best {mb / best:8.1f} MB/s, median {mb / statistics.median(walls):8.1f} MB/s wall; "
          f"clamd CPU {statistics.median(cpus) / mb * 100:.2f} s per 100 MB")
    print(f"  reference: SHA-256 of the same bytes here {mb / hash_wall:8.1f} MB/s; "
          f"scan/SHA-256 speed ratio {hash_wall / best:.3f}")


def upload_latency(clamd: Clamd, work: Path, uploads: int) -> None:
    servers = {
        "off": ServerProcess(work / "off", settings_env()).start(),
        "block": ServerProcess(work / "block", settings_env(scan_mode="block", scan_clamd_url=clamd.unix_url)).start(),
    }
    try:
        clients = {name: httpx.Client(base_url=s.base, headers=s.auth_headers(), timeout=600)
                   for name, s in servers.items()}
        for size in (16 * 1024, 1 * MiB, 16 * MiB):
            times: dict[str, list[float]] = {name: [] for name in servers}
            verdict_delays: list[float] = []
            for n in range(uploads if size < 16 * MiB else max(4, uploads // 5)):
                body = os.urandom(size)
                for name in (("off", "block") if n % 2 else ("block", "off")):
                    t0 = time.perf_counter()
                    r = clients[name].post("/Binary", content=body,
                                           headers={"Content-Type": "application/octet-stream"})
                    times[name].append(time.perf_counter() - t0)
                    assert r.status_code == 201, r.text
                    if name == "block" and n < 5:
                        verdict_delays.append(_until_clean(clients[name], r.json()["id"], t0))
            off, on = statistics.median(times["off"]), statistics.median(times["block"])
            p90 = {k: sorted(v)[int(len(v) * 0.9) - 1] for k, v in times.items()}
            print(f"upload {size // 1024:>6} KiB x {len(times['off'])}: median off {off * 1000:7.1f} ms, "
                  f"block {on * 1000:7.1f} ms, ratio {on / off:.3f}; p90 off {p90['off'] * 1000:7.1f} ms, "
                  f"block {p90['block'] * 1000:7.1f} ms; upload-to-clean median "
                  f"{statistics.median(verdict_delays) * 1000:7.1f} ms")
        for c in clients.values():
            c.close()
    finally:
        for s in servers.values():
            s.stop()


def _until_clean(client: httpx.Client, binary_id: str, started: float) -> float:
    while True:
        entry = client.get("/Binary", params={"_id": binary_id}).json()["entry"][0]["resource"]
        status = [p["valueCode"] for e in entry.get("meta", {}).get("extension", [])
                  if e["url"].endswith("/scan-status") for p in e["extension"] if p["url"] == "status"]
        if status == ["clean"]:
            return time.perf_counter() - started
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32, help="size of the throughput file (MiB)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--uploads", type=int, default=40, help="uploads per size and server")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores at start")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "clamd").mkdir()
        clamd = Clamd(work / "clamd", stream_max_bytes=(args.mib + 1) * MiB).start()
        try:
            throughput(clamd, os.urandom(args.mib * MiB), args.rounds)
            upload_latency(clamd, work, args.uploads)
        finally:
            clamd.stop()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
