"""Soak: mixed load at about half of the measured capacity for a while; RSS, errors and p95 per minute.

A fresh fhirvault server gets a mix of raw Binary uploads (sizes log-uniform between 1 KiB and 50 MiB),
full downloads, ranged reads, Patient creates and Patient searches. First the capacity is measured
(operations per second of that mix with CONCURRENCY closed-loop clients for --probe seconds); then the
same mix is offered at half that rate (open loop: operations start on a schedule, whatever the
answers' latency) for --minutes. Prints the server's RSS at the start and the end of the soak (and the
growth), the error count, and the p95 latency of every minute, with the ratio of the last minute's p95
to the first's (the trend). Asserts nothing.

Run: .venv/bin/python bench/soak.py [--minutes 10] [--probe 30] [--database sqlite|postgres]
                                    [--mode filesystem|database|s3|inline]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import FhirApi, ServerProcess, postgres_database, settings_env  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
CONCURRENCY = 4
MIX = (("upload", 2), ("download", 3), ("range", 3), ("create", 3), ("search", 3))  # (operation, weight)


@dataclass
class Sample:
    at: float        # seconds since the soak began
    operation: str
    seconds: float
    ok: bool


class Workload:
    """The operations of the mix against one server; uploads feed the Binaries later reads use."""

    def __init__(self, api: FhirApi, seed: int) -> None:
        self.api = api
        self.rng = random.Random(seed)
        self.binaries: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.pool = random.Random(seed).randbytes(50 * MiB)  # content is sliced out of this

    def choose(self) -> str:
        with self.lock:
            return self.rng.choices([op for op, _ in MIX], [w for _, w in MIX])[0]

    def run(self, operation: str) -> bool:
        with self.lock:
            rng = random.Random(self.rng.random())
            known = self.binaries[rng.randrange(len(self.binaries))] if self.binaries else None
        if operation in ("download", "range") and known is None:
            operation = "upload"
        if operation == "upload":
            size = int(2 ** rng.uniform(math.log2(KiB), math.log2(50 * MiB)))
            start = rng.randrange(0, len(self.pool) - size + 1)
            answer = self.api.post("/Binary", content=memoryview(self.pool)[start:start + size].tobytes(),
                                   headers={"Content-Type": "application/octet-stream"})
            if answer.status_code == 201:
                with self.lock:
                    self.binaries.append((answer.headers["Location"].split("/Binary/")[1].split("/")[0], size))
            return answer.status_code == 201
        if operation == "download":
            assert known is not None
            total = 0
            with self.api.stream("GET", f"/Binary/{known[0]}") as answer:
                for piece in answer.iter_bytes(MiB):
                    total += len(piece)
            return answer.status_code == 200 and total == known[1]
        if operation == "range":
            assert known is not None
            first = rng.randrange(known[1])
            last = min(known[1] - 1, first + rng.randrange(64 * KiB))
            answer = self.api.get(f"/Binary/{known[0]}", headers={"Range": f"bytes={first}-{last}"})
            return answer.status_code == 206 and len(answer.content) == last - first + 1
        if operation == "create":
            answer = self.api.post("/Patient", json={"resourceType": "Patient", "name": [
                {"family": f"Soak{rng.randrange(1000)}", "given": ["Load"]}], "gender": "unknown"})
            return answer.status_code == 201
        answer = self.api.get("/Patient", params={"family": f"Soak{rng.randrange(1000)}", "_count": 20})
        return answer.status_code == 200


def timed(workload: Workload, operation: str, began: float, samples: list[Sample], lock: threading.Lock) -> None:
    start = time.monotonic()
    try:
        ok = workload.run(operation)
    except httpx.HTTPError:
        ok = False
    sample = Sample(start - began, operation, time.monotonic() - start, ok)
    with lock:
        samples.append(sample)


def measure_capacity(workload: Workload, seconds: float) -> float:
    """Operations per second of the mix with CONCURRENCY closed-loop clients."""
    samples: list[Sample] = []
    lock = threading.Lock()
    began = time.monotonic()

    def client() -> None:
        while time.monotonic() - began < seconds:
            timed(workload, workload.choose(), began, samples, lock)

    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(samples) / (time.monotonic() - began)


def soak(workload: Workload, rate: float, seconds: float, rss: Callable[[], int]
         ) -> tuple[list[Sample], list[tuple[float, int]]]:
    """Operations started at `rate` per second (open loop) for `seconds`; RSS sampled every 10 s."""
    samples: list[Sample] = []
    lock = threading.Lock()
    rss_seen: list[tuple[float, int]] = [(0.0, rss())]
    began = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        n = 0
        while True:
            due = began + n / rate
            now = time.monotonic()
            if due - began >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            pool.submit(timed, workload, workload.choose(), began, samples, lock)
            n += 1
            if time.monotonic() - began >= 10 * len(rss_seen):
                rss_seen.append((time.monotonic() - began, rss()))
    rss_seen.append((time.monotonic() - began, rss()))
    return samples, rss_seen


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else (values[0] if values else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--probe", type=float, default=30.0, help="seconds of the capacity measurement")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--mode", choices=["filesystem", "database", "s3", "inline"], default="filesystem")
    args = parser.parse_args()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fv-soak-")))
        settings: dict[str, object] = {"storage_mode": args.mode, "max_binary_bytes": 64 * MiB}
        if args.database == "postgres":
            settings["database_url"] = stack.enter_context(postgres_database())
        if args.mode == "s3":
            from tests.support.s3 import SeaweedS3, unique_bucket

            gateway = stack.enter_context(SeaweedS3(work / "weed"))
            settings.update(gateway.settings(unique_bucket("soak")))
        server = ServerProcess(work / "server", settings_env(**settings)).start(timeout=120)
        stack.callback(server.stop)
        api = stack.enter_context(server.api(timeout=300, limits=httpx.Limits(max_connections=64)))
        workload = Workload(api, seed=16)
        capacity = measure_capacity(workload, args.probe)
        rate = capacity / 2
        print(f"capacity: {capacity:.1f} operations/s with {CONCURRENCY} closed-loop clients "
              f"({args.database}, {args.mode}); soak at {rate:.1f}/s for {args.minutes:g} min", flush=True)
        samples, rss_seen = soak(workload, rate, args.minutes * 60, server.rss_bytes)
    errors = [s for s in samples if not s.ok]
    start_rss, end_rss = rss_seen[0][1], rss_seen[-1][1]
    print(f"operations: {len(samples)}  errors: {len(errors)}"
          + (f" ({', '.join(sorted({s.operation for s in errors}))})" if errors else ""))
    print(f"RSS start {start_rss / MiB:.1f} MiB, end {end_rss / MiB:.1f} MiB, growth "
          f"{(end_rss - start_rss) / MiB:+.1f} MiB (peak {max(r for _, r in rss_seen) / MiB:.1f} MiB)")
    minutes = math.ceil(args.minutes)
    per_minute = []
    print("minute  operations  p95 (ms)  p95 without uploads (ms)")
    for minute in range(minutes):
        inside = [s for s in samples if minute * 60 <= s.at < (minute + 1) * 60]
        if not inside:
            continue
        small = [s.seconds for s in inside if s.operation != "upload"]
        per_minute.append(p95([s.seconds for s in inside]))
        print(f"{minute + 1:>6}  {len(inside):>10}  {per_minute[-1] * 1000:>8.0f}  {p95(small) * 1000:>24.0f}")
    if len(per_minute) >= 2:
        print(f"p95 trend: last minute / first minute = {per_minute[-1] / per_minute[0]:.2f}")


if __name__ == "__main__":
    main()
