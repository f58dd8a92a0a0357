"""Direct upload to the object store (Binary/$upload-url, PUT to the store, Binary/$upload-complete) against a
raw `POST /Binary` of the same file, in the same run, against the same s3-mode server and SeaweedFS gateway.

Prints for each way: wall time, throughput, the fhirvault server's CPU seconds (user + system, all its
processes) and the SeaweedFS gateway's, and the ratios direct / raw. The direct upload's client-side
SHA-256 pass over the file is part of its wall time and also shown apart (the client's cost, before
the first byte goes up). Asserts
nothing. The machine's load average is printed with the figures: on a shared machine compare the ratios.

Run: .venv/bin/python bench/direct_upload.py [--size 256M] [--repeats 3] [--part 64M] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fhirvault.client import FhirClient  # noqa: E402
from fhirvault.client.direct_upload import DirectSource  # noqa: E402
from tests.support.s3 import SeaweedS3, unique_bucket  # noqa: E402
from tests.support.server import (  # noqa: E402
    ServerProcess,
    postgres_database,
    process_tree,
    settings_env,
)

MiB = 1024**2
TICKS = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024**3}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes (fields 14 and 15 of /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def make_file(path: Path, size: int) -> Path:
    block = os.urandom(MiB)
    with path.open("wb") as fh:
        for offset in range(0, size, MiB):
            fh.write(block[: min(MiB, size - offset)])
    return path


def measured(server_pids: list[int], weed_pid: int, run) -> dict[str, float]:
    """Wall time and CPU seconds of server and store around `run()`."""
    weed = process_tree(weed_pid)
    s0, w0, t0 = cpu_seconds(server_pids), cpu_seconds(weed), time.perf_counter()
    run()
    t1 = time.perf_counter()
    return {"wall": t1 - t0, "server_cpu": cpu_seconds(server_pids) - s0, "store_cpu": cpu_seconds(weed) - w0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", default="64M", help="DIRECT_UPLOAD_PART_BYTES of the server")
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    size = parse_size(args.size)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fv-bench-direct-")))
        gateway = stack.enter_context(SeaweedS3(work / "s3"))
        assert gateway.proc is not None
        settings = {**gateway.settings(unique_bucket("fv-bench")), "direct_upload_part_bytes": parse_size(args.part)}
        if args.database == "postgres":
            settings["database_url"] = stack.enter_context(postgres_database())
        server = ServerProcess(work / "server", settings_env(**settings)).start()
        stack.callback(server.stop)
        creds = json.loads((server.data_dir / "admin-client.json").read_text())
        path = make_file(work / "upload.bin", size)
        pids = server.pids()
        client = stack.enter_context(FhirClient(server.base, client_id=creds["client_id"],
                                                client_secret=creds["client_secret"], timeout=600))
        headers = {**server.auth_headers(), "Content-Type": "application/octet-stream",
                   "Content-Length": str(size)}

        def raw_post() -> None:
            with path.open("rb") as fh:
                r = httpx.post(f"{server.base}/Binary", content=iter(lambda: fh.read(MiB), b""), headers=headers,
                               timeout=600)
            assert r.status_code == 201, r.text

        hashing: list[float] = []

        def direct() -> None:
            t0 = time.perf_counter()
            source = DirectSource(path)
            hashing.append(time.perf_counter() - t0)
            client.create_binary_direct(source, content_type="application/octet-stream")

        # One of each first, so both run against a warm server and a bucket that exists.
        raw_post()
        direct()
        hashing.clear()
        results: dict[str, list[dict[str, float]]] = {"raw POST /Binary": [], "direct upload": []}
        for _ in range(args.repeats):
            results["raw POST /Binary"].append(measured(pids, gateway.proc.pid, raw_post))
            results["direct upload"].append(measured(pids, gateway.proc.pid, direct))
        load = os.getloadavg()
        print(f"{size // MiB} MiB, {args.repeats} runs each (median), {args.database}, parts of {args.part}; "
              f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
        print(f"{'':18} {'wall s':>8} {'MiB/s':>8} {'server CPU s':>13} {'store CPU s':>12}")
        medians: dict[str, dict[str, float]] = {}
        for name, runs in results.items():
            m = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            medians[name] = m
            print(f"{name:18} {m['wall']:8.2f} {size / MiB / m['wall']:8.1f} {m['server_cpu']:13.2f} "
                  f"{m['store_cpu']:12.2f}")
        raw, dire = medians["raw POST /Binary"], medians["direct upload"]
        print(f"direct / raw: wall {dire['wall'] / raw['wall']:.2f}, server CPU "
              f"{dire['server_cpu'] / max(raw['server_cpu'], 0.01):.2f}")
        print(f"of the direct upload's wall time, the client's SHA-256 pass over the file before sending: "
              f"median {statistics.median(hashing):.2f} s")


if __name__ == "__main__":
    main()
