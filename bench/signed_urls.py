"""Signed URLs: a large download through /storage beside nginx serving the same file, and the cost of
rewriting Attachment URLs on a search page (100 resources x 3 attachments), rewriting on vs off.

Prints figures; asserts nothing.
Run: .venv/bin/python bench/signed_urls.py [--size-mib 1024] [--rounds 3] [--search-reads 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.binary import make_file  # noqa: E402
from tests.support.server import ServerProcess, free_port, settings_env  # noqa: E402

MiB = 1024 * 1024


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(MiB):
            yield block


def download_seconds(url: str) -> tuple[float, int]:
    """Wall time and byte count of one GET, by curl when present (so the client is not the bottleneck)."""
    curl = shutil.which("curl")
    start = time.perf_counter()
    if curl:
        out = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{size_download} %{http_code}", url],
                             check=True, capture_output=True, text=True).stdout.split()
        if out[1] != "200":
            raise RuntimeError(f"GET {url} answered {out[1]}")
        return time.perf_counter() - start, int(out[0])
    got = 0
    with httpx.stream("GET", url, timeout=600) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes(MiB):
            got += len(chunk)
    return time.perf_counter() - start, got


@contextmanager
def nginx_serving(root: Path, workdir: Path) -> Iterator[str]:
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {workdir}/nginx-body;
  proxy_temp_path {workdir}/nginx-proxy;
  fastcgi_temp_path {workdir}/nginx-fastcgi;
  uwsgi_temp_path {workdir}/nginx-uwsgi;
  scgi_temp_path {workdir}/nginx-scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def download_bench(size: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "payload.bin"
        make_file(source, size)
        server = ServerProcess(work / "fv", settings_env(log_level="warning", storage_mode="filesystem")).start()
        try:
            with server.api(timeout=1800) as api:
                r = api.post("/Binary", content=file_chunks(source),
                             headers={"Content-Type": "application/octet-stream"})
                r.raise_for_status()
                signed = r.json()["url"]
            web_root = work / "www"
            web_root.mkdir()
            os.link(source, web_root / "payload.bin")
            # nginx's workers run as an unprivileged user: let them in.
            for path in (work, web_root):
                path.chmod(0o755)
            source.chmod(0o644)
            with nginx_serving(web_root, work) as nginx_url:
                ours, theirs = [], []
                for _ in range(rounds):
                    secs, got = download_seconds(signed)
                    assert got == size, f"signed URL gave {got} bytes, expected {size}"
                    ours.append(size / secs / MiB)
                    secs, got = download_seconds(f"{nginx_url}/payload.bin")
                    assert got == size
                    theirs.append(size / secs / MiB)
            best_ours, best_nginx = max(ours), max(theirs)
            print(f"download {size // MiB} MiB  signed URL: {best_ours:8.1f} MiB/s   nginx: {best_nginx:8.1f} MiB/s"
                  f"   ratio: {best_ours / best_nginx:.2f}  (best of {rounds})")
        finally:
            server.stop()


def _seed_search_page(server: ServerProcess, rewrite: bool) -> None:
    """300 Binaries and 100 DocumentReferences with 3 attachments each; checks the page is signed or not."""
    with server.api() as api:
        ids = []
        for i in range(300):
            r = api.post("/Binary", content=f"attachment {i}".encode() * 20, headers={"Content-Type": "image/png"})
            ids.append(r.json()["id"])
        for n in range(100):
            doc = {"resourceType": "DocumentReference", "status": "current",
                   "content": [{"attachment": {"url": f"Binary/{ids[3 * n + k]}"}} for k in range(3)]}
            api.post("/DocumentReference", json=doc).raise_for_status()
        page = api.get("/DocumentReference", params={"_count": 100}).json()
        urls = [c["attachment"]["url"] for e in page["entry"] for c in e["resource"]["content"]]
        assert len(urls) == 300 and all(("/storage/" in u) == rewrite for u in urls)


def search_bench(reads: int, rounds: int = 10, encoding: str = "identity") -> None:
    """The search page of 100 resources x 3 attachments read one request at a time from two servers alike
    but for REWRITE_ATTACHMENT_URLS, in `rounds` alternating rounds of reads/rounds pages each (so that a
    change of machine load touches both alike); prints the median per page of the wall time and of the
    server's CPU time (from /proc), and their on/off ratios. `encoding`: the Accept-Encoding asked for
    (identity, as wrk asks; gzip, as browsers and httpx do: the signed page is longer to compress too)."""
    from bench.requests import tree_cpu_seconds

    servers: dict[bool, ServerProcess] = {}
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    per_round = max(1, reads // rounds)
    headers = {"Accept-Encoding": encoding}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for rewrite in (False, True):
                servers[rewrite] = ServerProcess(Path(tmp) / f"fv-{rewrite}", settings_env(
                    log_level="warning", rewrite_attachment_urls=rewrite)).start()
                _seed_search_page(servers[rewrite], rewrite)
            clients = {k: s.api() for k, s in servers.items()}
            for n in range(rounds + 1):  # round 0 warms both up and is not counted
                for rewrite in ((False, True) if n % 2 == 0 else (True, False)):
                    api, pid = clients[rewrite], servers[rewrite].proc.pid  # type: ignore[union-attr]
                    cpu_start, start = tree_cpu_seconds(pid), time.perf_counter()
                    for _ in range(per_round):
                        api.get("/DocumentReference", params={"_count": 100}, headers=headers).raise_for_status()
                    if n:
                        wall[rewrite].append((time.perf_counter() - start) / per_round * 1000)
                        cpu[rewrite].append((tree_cpu_seconds(pid) - cpu_start) / per_round * 1000)
            for client in clients.values():
                client.close()
        finally:
            for server in servers.values():
                server.stop()
    off, on = statistics.median(wall[False]), statistics.median(wall[True])
    cpu_off, cpu_on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"search page of 100 resources x 3 attachments, one request at a time, Accept-Encoding: {encoding}, "
          f"median of {rounds} alternating "
          f"rounds of {per_round} pages: rewriting off {off:.2f} ms, on {on:.2f} ms, overhead "
          f"{100 * (on - off) / off:+.1f} %; server CPU per page off {cpu_off:.2f} ms, on {cpu_on:.2f} ms, "
          f"overhead {100 * (cpu_on - cpu_off) / cpu_off:+.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--search-reads", type=int, default=200)
    parser.add_argument("--skip-download", action="store_true")
    args = parser.parse_args()
    for encoding in ("identity", "gzip"):
        search_bench(args.search_reads, encoding=encoding)
    if not args.skip_download:
        download_bench(args.size_mib * MiB, args.rounds)


if __name__ == "__main__":
    main()
