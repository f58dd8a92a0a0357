"""Paging links forward and backward: the time of a `next` page against a `previous` page deep in a result.

Loads the population of bench/search.py (N resources, half of them Observations) through fhirvault's own
write path, starts `fhirvault serve` on it, and for a few searches of all Observations follows `next`
links from the first page for --pages pages, then `previous` links back to the first page. Both are keyset
(`_cursor`, `_before`): each page should cost about the same whatever its depth, in either direction.

Run: .venv/bin/python bench/paging.py [--resources 20000] [--pages 60] [--count 50] [--backend sqlite,postgres]

Prints, per backend and search: p50/p95 (ms) of the `next` requests and of the `previous` requests, the
server's mean CPU time per request of each, and the p50 of the last `next` page against the second
(a cost that grew with depth would show there).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.search import analyze, load, population, server_cpu  # noqa: E402
from fhirvault.config import Settings  # noqa: E402
from tests.support.server import ServerProcess, postgres_available, postgres_database, settings_env  # noqa: E402

SEARCHES: list[tuple[str, dict[str, str]]] = [
    ("default order", {}),
    ("_sort=-_lastUpdated", {"_sort": "-_lastUpdated"}),
    ("_sort=-date", {"_sort": "-date"}),
    ("_sort=code,date", {"_sort": "code,date"}),
]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == relation), None)


def walk(client: httpx.Client, first: dict[str, Any], relation: str, pages: int, pids: list[int]
         ) -> tuple[list[float], float, dict[str, Any]]:
    """Follows `relation` links from `first` up to `pages` times: each request's wall time (ms), the
    server's mean CPU time per request (ms), and the last page."""
    samples: list[float] = []
    page = first
    cpu = server_cpu(pids)
    while len(samples) < pages and (url := link(page, relation)) is not None:
        start = time.perf_counter()
        r = client.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
        page = r.json()
    return samples, (server_cpu(pids) - cpu) / max(1, len(samples)) * 1000, page


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run_backend(backend: str, n: int, pages: int, count: int) -> None:
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        env: dict[str, Any] = {"log_level": "warning"}
        if backend == "postgres":
            env["database_url"] = stack.enter_context(postgres_database())
        settings = Settings(data_dir=Path(tmp), **{k: v for k, v in env.items() if k != "log_level"})
        took = asyncio.run(load(settings, population(n)))
        print(f"\n== {backend}: {n} resources loaded in {took:.0f} s; {count} per page, {pages} pages each way")
        asyncio.run(analyze(settings))
        server = ServerProcess(Path(tmp), settings_env(**env)).start(timeout=600)
        stack.callback(server.stop)
        pids = server.pids()
        with httpx.Client(base_url=server.base, headers=server.auth_headers(), timeout=120) as client:
            for name, params in SEARCHES:
                first = client.get("/Observation", params={**params, "_count": str(count)})
                first.raise_for_status()
                forward, cpu_f, last = walk(client, first.json(), "next", pages, pids)
                backward, cpu_b, _ = walk(client, last, "previous", pages, pids)
                deep = statistics.median(forward[-5:]) / statistics.median(forward[:5])
                print(f"{name:22} next p50 {statistics.median(forward):6.1f} ms p95 {p(forward, 0.95):6.1f} ms "
                      f"CPU {cpu_f:5.1f} ms | previous p50 {statistics.median(backward):6.1f} ms "
                      f"p95 {p(backward, 0.95):6.1f} ms CPU {cpu_b:5.1f} ms | last 5 / first 5 next pages {deep:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, default=20_000)
    parser.add_argument("--pages", type=int, default=60)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--backend", default="sqlite,postgres")
    args = parser.parse_args()
    for backend in args.backend.split(","):
        if backend == "postgres" and not postgres_available():
            print("PostgreSQL at 127.0.0.1:5432 is not reachable: skipped")
            continue
        run_backend(backend, args.resources, args.pages, args.count)


if __name__ == "__main__":
    main()
