"""tus resumable upload throughput beside a plain raw `POST /Binary` in the same run, the server's RSS,
and the bytes sent again after a connection cut at 90 %.

One fresh fhirvault server (SQLite, one process) in the chosen storage mode gets the same file
(random bytes, streamed from disk) by a raw `POST /Binary`, then by tus in 5 MiB and in 50 MiB
PATCHes, each `--rounds` times in turn; the best time of each counts (the machine is shared). The
ratio is raw time / tus time (1.0: as fast as a raw POST; the target is >= 0.8). Server CPU seconds
come from /proc, RSS is sampled every 50 ms. Last, one tus upload in a single PATCH goes through a
proxy that cuts the connection at 90 %; the client asks for the offset and sends the rest: the bytes
sent again are those the server had not stored when the connection broke. Prints figures; asserts
nothing.

Run: .venv/bin/python bench/tus.py [--size 1G] [--mode filesystem|database|s3] [--rounds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.cut_proxy import cut_proxy  # noqa: E402
from tests.support.s3 import SeaweedS3, unique_bucket  # noqa: E402
from tests.support.server import ServerProcess, free_port, settings_env, status_bytes  # noqa: E402

MiB = 1024**2
READ = MiB
TIMEOUT = 1800.0
TUS = {"Tus-Resumable": "1.0.0"}


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def file_slice(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        left = length
        while left:
            chunk = fh.read(min(READ, left))
            left -= len(chunk)
            yield chunk


class Sampler:
    """Peak RSS of the server's processes while a transfer runs, sampled every 50 ms."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_bytes(self.server.pids(), "VmRSS"))
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(server: ServerProcess) -> float:
    total = 0
    for pid in server.pids():
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def raw_post(http: httpx.Client, server: ServerProcess, path: Path, size: int) -> str:
    r = http.post(f"{server.base}/Binary", content=file_slice(path, 0, size),
                  headers={"Content-Type": "application/octet-stream", "Content-Length": str(size),
                           "Prefer": "return=minimal"})
    r.raise_for_status()
    return r.headers["location"].split("/Binary/")[1].split("/")[0]


def tus_upload(http: httpx.Client, base: str, path: Path, size: int, patch_bytes: int | None,
               direct: str | None = None) -> str:
    """A tus upload in PATCHes of `patch_bytes` (None: one); `direct` replaces the public base of the
    upload URL (to skip the proxy). Returns the Binary id."""
    meta = "contentType " + base64.b64encode(b"application/octet-stream").decode()
    r = http.post(f"{base}/Binary/$upload", headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": meta})
    r.raise_for_status()
    url = r.headers["location"]
    if direct:
        url = direct + url[url.index("/fhir/R4/"):]
    offset = 0
    while True:
        length = size - offset if patch_bytes is None else min(patch_bytes, size - offset)
        r = http.patch(url, content=file_slice(path, offset, length),
                       headers={**TUS, "Content-Type": "application/offset+octet-stream",
                                "Upload-Offset": str(offset), "Content-Length": str(length)})
        r.raise_for_status()
        offset = int(r.headers["upload-offset"])
        if "x-binary-id" in r.headers:
            return r.headers["x-binary-id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", default="1G")
    parser.add_argument("--mode", default="filesystem", choices=["filesystem", "database", "s3"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    size = parse_size(args.size)
    with ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fv-bench-tus-")))
        work.mkdir(parents=True, exist_ok=True)
        path = work / "upload.bin"
        with path.open("wb") as fh:
            for _ in range(size // MiB):
                fh.write(os.urandom(MiB))
            fh.write(os.urandom(size % MiB))
        settings: dict[str, object] = {"storage_mode": args.mode, "max_binary_bytes": 2 * size + MiB}
        if args.mode == "s3":
            gateway = SeaweedS3(work / "s3").start()
            stack.callback(gateway.stop)
            settings.update(gateway.settings(unique_bucket()))
        port = free_port()
        proxy = stack.enter_context(cut_proxy(port))
        server = ServerProcess(work / "data", settings_env(public_base_url=proxy.url, **settings), port=port).start()
        stack.callback(server.stop)
        http = stack.enter_context(httpx.Client(headers=server.auth_headers(), timeout=TIMEOUT))
        idle_rss = status_bytes(server.pids(), "VmRSS")
        runs = {"raw POST": lambda: raw_post(http, server, path, size),
                "tus 5 MiB PATCHes": lambda: tus_upload(http, server.base, path, size, 5 * MiB, server.url),
                "tus 50 MiB PATCHes": lambda: tus_upload(http, server.base, path, size, 50 * MiB, server.url)}
        best: dict[str, tuple[float, float, int]] = {}
        for _ in range(args.rounds):
            for name, run in runs.items():
                cpu = cpu_seconds(server)
                with Sampler(server) as sampler:
                    started = time.perf_counter()
                    binary_id = run()
                    took = time.perf_counter() - started
                cpu = cpu_seconds(server) - cpu
                http.delete(f"{server.base}/Binary/{binary_id}")
                server.cli("expunge", f"Binary/{binary_id}")
                if name not in best or took < best[name][0]:
                    best[name] = (took, cpu, sampler.peak)
        # The cut: one PATCH through the proxy, cut at 90 %, then the rest from the server's offset.
        before = proxy.sent
        proxy.cut_after(int(size * 0.9))
        meta = "contentType " + base64.b64encode(b"application/octet-stream").decode()
        r = http.post(f"{proxy.url}/fhir/R4/Binary/$upload",
                      headers={**TUS, "Upload-Length": str(size), "Upload-Metadata": meta})
        url = r.headers["location"]
        with suppress(httpx.HTTPError):
            http.patch(url, content=file_slice(path, 0, size), headers={
                **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0",
                "Content-Length": str(size)})
        offset = int(http.head(url, headers=TUS).headers["upload-offset"])
        rest = http.patch(url, content=file_slice(path, offset, size - offset), headers={
            **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset),
            "Content-Length": str(size - offset)})
        rest.raise_for_status()
        assert "x-binary-id" in rest.headers
        cut_at = int(size * 0.9)
    raw_time = best["raw POST"][0]
    load = os.getloadavg()
    print(f"tus bench: {size / MiB:.0f} MiB file, {args.mode} mode, SQLite, 1 server process, "
          f"best of {args.rounds}; load average {load[0]:.2f} {load[1]:.2f} on {os.cpu_count()} cores")
    print(f"{'upload':<22}{'seconds':>9}{'MiB/s':>9}{'server CPU s':>14}{'peak RSS MiB':>14}{'vs raw':>8}")
    for name, (took, cpu, peak) in best.items():
        print(f"{name:<22}{took:>9.2f}{size / MiB / took:>9.1f}{cpu:>14.2f}{peak / MiB:>14.1f}"
              f"{raw_time / took:>8.2f}")
    print(f"server RSS when idle: {idle_rss / MiB:.1f} MiB")
    print(f"cut at 90 % ({cut_at} bytes of the body through the proxy): the server had stored {offset} "
          f"bytes; bytes sent again = {cut_at - offset} ({(cut_at - offset) / MiB:.2f} MiB); "
          f"resent counted by the proxy over both attempts beyond the file's size: "
          f"{proxy.sent - before - size} bytes (request headers included)")


if __name__ == "__main__":
    main()
