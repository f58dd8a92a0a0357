"""Create and read requests per second of a small Patient with 16 concurrent clients, SQLite and PostgreSQL.

Run: .venv/bin/python bench/crud.py [--seconds 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.server import ServerProcess, postgres_available, postgres_database, settings_env  # noqa: E402

PATIENT = {"resourceType": "Patient", "name": [{"family": "Bench", "given": ["Mark"]}], "gender": "other"}


async def run_phase(base: str, headers: dict[str, str], concurrency: int, seconds: float, kind: str,
                    ids: list[str]) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal done
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            i = n
            while time.perf_counter() < stop_at:
                if kind == "create":
                    r = await client.post(f"{base}/Patient", json=PATIENT,
                                          headers={"Content-Type": "application/fhir+json"})
                    if r.status_code == 201:
                        ids.append(r.json()["id"])
                else:
                    r = await client.get(f"{base}/Patient/{ids[i % len(ids)]}")
                    i += concurrency
                r.raise_for_status()
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    backends = ["sqlite"] + (["postgres"] if postgres_available() else [])
    print(f"{'backend':10} {'create/s':>10} {'read/s':>10}  (concurrency {args.concurrency}, {args.seconds}s each)")
    for backend in backends:
        with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
            settings = {"log_level": "warning"}
            if backend == "postgres":
                settings["database_url"] = stack.enter_context(postgres_database())
            server = ServerProcess(Path(tmp), settings_env(**settings)).start()
            stack.callback(server.stop)
            ids: list[str] = []
            headers = server.auth_headers()  # the admin token; every request is authenticated
            creates = asyncio.run(run_phase(server.base, headers, args.concurrency, args.seconds, "create", ids))
            reads = asyncio.run(run_phase(server.base, headers, args.concurrency, args.seconds, "read", ids))
            print(f"{backend:10} {creates:10.0f} {reads:10.0f}")


if __name__ == "__main__":
    main()
