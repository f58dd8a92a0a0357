"""Content deduplication: what it costs new content, and what storing a duplicate takes.

Two fresh fhirvault servers in the same run, one with DEDUP_ENABLED=true and one with false (same storage
mode and database), take raw `POST /Binary` uploads of a file streamed from disk:

1. new content: each upload's first bytes are made unique, so neither server finds a duplicate; the
   rounds alternate between the two servers so that load on the machine hits both alike. Throughput
   (MB/s of wall time) and the server's CPU seconds per upload; the figure is dedup-on / dedup-off
   (target >= 0.95).
2. the same file uploaded again to the dedup server (a duplicate: hashed in full, then discarded),
   beside a new file of the same size, alternating: the time of each and their ratio.

Prints figures and ratios measured in this run; asserts nothing.

Run: .venv/bin/python bench/dedup.py [--size 256M] [--rounds 3] [--mode filesystem|database|s3]
                                     [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.binary import human, make_file, parse_size  # noqa: E402
from tests.support.s3 import SeaweedS3, unique_bucket  # noqa: E402
from tests.support.server import (  # noqa: E402
    ServerProcess,
    postgres_available,
    postgres_database,
    process_tree,
    settings_env,
)

MiB = 1024 * 1024
BLOCK = 1 * MiB
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(server: ServerProcess) -> float:
    """User + system CPU time of the server's processes so far."""
    assert server.proc is not None
    total = 0
    for pid in process_tree(server.proc.pid):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return total / CLOCK_TICKS


def file_chunks(path: Path, prefix: bytes = b"") -> Iterator[bytes]:
    """The file in blocks, its first bytes replaced by `prefix` (new content without a new file)."""
    with open(path, "rb") as fh:
        first = True
        while block := fh.read(BLOCK):
            if first and prefix:
                block = prefix + block[len(prefix):]
            first = False
            yield block


def timed_upload(server: ServerProcess, headers: dict[str, str], path: Path, prefix: bytes = b""
                 ) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one streamed upload."""
    cpu = cpu_seconds(server)
    started = time.perf_counter()
    answer = httpx.post(f"{server.base}/Binary", content=file_chunks(path, prefix), headers=headers, timeout=1800)
    wall = time.perf_counter() - started
    if answer.status_code != 201:
        raise SystemExit(f"upload failed: {answer.status_code} {answer.text[:300]}")
    return wall, cpu_seconds(server) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("256M"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=["filesystem", "database", "s3"], default="filesystem")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()

    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="fv-dedup-bench-") as tmp:
        work = Path(tmp)
        path = make_file(work / "content.bin", args.size)
        base: dict[str, object] = {"storage_mode": args.mode}
        if args.mode == "s3":
            gateway = SeaweedS3(work / "weed").start()
            stack.callback(gateway.stop)
        servers: dict[bool, ServerProcess] = {}
        for dedup in (True, False):
            settings = dict(base)
            if args.mode == "s3":
                settings.update(gateway.settings(unique_bucket("dedup-bench")))
            if args.database == "postgres":
                if not postgres_available():
                    raise SystemExit("PostgreSQL at 127.0.0.1:5432 is not reachable")
                settings["database_url"] = stack.enter_context(postgres_database())
            server = ServerProcess(work / f"dedup-{dedup}", settings_env(**settings, dedup_enabled=dedup))
            server.start()
            stack.callback(server.stop)
            servers[dedup] = server
        headers = {dedup: {**s.auth_headers(), "Content-Type": "application/octet-stream"}
                   for dedup, s in servers.items()}
        load_before = os.getloadavg()

        # warm-up: one upload each (first writes make directories, pools, the S3 bucket)
        for dedup in (True, False):
            timed_upload(servers[dedup], headers[dedup], path, os.urandom(16))

        new: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for n in range(args.rounds):
            order = (True, False) if n % 2 == 0 else (False, True)
            for dedup in order:
                new[dedup].append(timed_upload(servers[dedup], headers[dedup], path, os.urandom(16)))

        # duplicate vs new on the dedup server; the original is stored first
        timed_upload(servers[True], headers[True], path)
        duplicate: list[tuple[float, float]] = []
        fresh: list[tuple[float, float]] = []
        for n in range(args.rounds):
            if n % 2 == 0:
                duplicate.append(timed_upload(servers[True], headers[True], path))
                fresh.append(timed_upload(servers[True], headers[True], path, os.urandom(16)))
            else:
                fresh.append(timed_upload(servers[True], headers[True], path, os.urandom(16)))
                duplicate.append(timed_upload(servers[True], headers[True], path))
        load_after = os.getloadavg()
        stats = servers[True].cli("storage", "stats")

    size_mb = args.size / 1e6

    def med(values: list[tuple[float, float]], i: int) -> float:
        return statistics.median(v[i] for v in values)

    print(f"\ncontent deduplication, {human(args.size)} per upload, {args.mode} on {args.database}, "
          f"{args.rounds} rounds (medians); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, "
          f"{os.cpu_count()} cores")
    print(f"{'':34}{'wall s':>9}{'MB/s':>9}{'server CPU s':>14}")
    for label, values in (("new content, DEDUP_ENABLED=true", new[True]),
                          ("new content, DEDUP_ENABLED=false", new[False]),
                          ("duplicate (dedup on)", duplicate), ("new content (same run)", fresh)):
        print(f"{label:34}{med(values, 0):9.2f}{size_mb / med(values, 0):9.1f}{med(values, 1):14.2f}")
    throughput = med(new[False], 0) / med(new[True], 0)
    cpu = med(new[False], 1) / med(new[True], 1) if med(new[True], 1) else float("nan")
    print(f"\nnew-content throughput, dedup on / off: {throughput:.3f} x (target >= 0.95); "
          f"server CPU efficiency on / off: {cpu:.3f} x")
    print(f"time to store a duplicate / a new file: {med(duplicate, 0) / med(fresh, 0):.3f} x wall, "
          f"{med(duplicate, 1) / med(fresh, 1):.3f} x server CPU")
    print("\nfhirvault storage stats of the dedup server:\n" + stats.stdout)


if __name__ == "__main__":
    main()
