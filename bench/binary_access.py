"""$binary-access-write and -read of large content: throughput and the server's peak RSS per size.

Run: .venv/bin/python bench/binary_access.py [--sizes 100M,1G] [--mode filesystem]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.binary import human, make_file, mbps, parse_size, peak_rss, rss_bytes, transfer  # noqa: E402
from tests.support.server import ServerProcess, settings_env  # noqa: E402

MiB = 1024 * 1024
PATH = "DocumentReference.content.attachment"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100M,1G")
    parser.add_argument("--mode", default="filesystem")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", settings_env(storage_mode=args.mode, log_level="warning")).start()
        try:
            auth = server.auth_headers()
            assert server.proc is not None
            pid = server.proc.pid
            print(f"$binary-access on {args.mode} storage (SQLite); server RSS idle {rss_bytes(pid) / MiB:.0f} MiB")
            print(f"{'size':>8} {'write MB/s':>11} {'write peak MiB':>15} {'read MB/s':>10} {'read peak MiB':>14}")
            for size in sizes:
                source = make_file(Path(tmp) / f"content-{size}", size)
                doc = httpx.post(f"{server.base}/DocumentReference", headers={**auth,
                                 "Content-Type": "application/fhir+json"},
                                 json={"resourceType": "DocumentReference", "status": "current",
                                       "content": [{"attachment": {"contentType": "video/mp4"}}]}).json()
                url = f"{server.base}/DocumentReference/{doc['id']}"
                with peak_rss(pid) as write_peak:
                    written = transfer(f"{url}/$binary-access-write?path={PATH}", "POST",
                                       {**auth, "Content-Type": "video/mp4"}, upload=source)
                assert written.status == 200, written.body_head
                with peak_rss(pid) as read_peak:
                    read = transfer(f"{url}/$binary-access-read?path={PATH}", "GET", auth)
                assert read.status == 200 and read.body_bytes == size
                print(f"{human(size):>8} {mbps(size, written.seconds):11.0f} {write_peak() / MiB:15.0f} "
                      f"{mbps(size, read.seconds):10.0f} {read_peak() / MiB:14.0f}")
                source.unlink()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
