"""Raw Binary upload and download throughput and the server's peak RSS in each storage mode, beside nginx.

For each file size and storage mode a fresh fhirvault server gets the file by `POST /Binary`
(`application/octet-stream`, streamed from disk) and gives it back by `GET /Binary/{id}` (streamed to
/dev/null); the largest Binary of each mode is also read as FHIR JSON (base64 `data`). nginx, started
here with a generated configuration on a loopback port, serves the same file and takes it by WebDAV PUT,
driven by the very same client code in the same run. Prints figures and fhirvault/nginx ratios; asserts
nothing.

Run: .venv/bin/python bench/binary.py [--sizes 1M,100M,1G] [--modes inline,database,filesystem,s3]
                                      [--database sqlite|postgres] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import grp
import io
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.s3 import SeaweedS3, unique_bucket  # noqa: E402
from tests.support.server import (  # noqa: E402
    ServerProcess,
    free_port,
    postgres_available,
    postgres_database,
    process_tree,
    settings_env,
    status_bytes,
)

KiB, MiB, GiB = 1024, 1024**2, 1024**3
ALL_SIZES = "1M,100M,1G"
ALL_MODES = "inline,database,filesystem,s3"
INLINE_LIMIT = 100 * MiB  # inline keeps base64 inside the resource: larger files are not sensible there
READ_BLOCK = 1 * MiB
TIMEOUT = 1800.0  # seconds a single transfer may take


# -- sizes and files -------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1M, 100M, 1G)")
    return int(match.group(1)) * {"": 1, "K": KiB, "M": MiB, "G": GiB}[match.group(2).upper()]


def human(size: int) -> str:
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def make_file(path: Path, size: int) -> Path:
    """Incompressible bytes, so nothing along the way can cheat by compressing."""
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            fh.write(block)
            left -= len(block)
    return path


def repeats_for(size: int) -> int:
    """Small files are timed several times (the best run counts); a 1 GiB transfer once."""
    return max(1, min(5, (256 * MiB) // max(size, 1)))


# -- memory ----------------------------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants together (a server's workers are its children)."""
    return status_bytes(process_tree(pid), "VmRSS")


@contextmanager
def peak_rss(pid: int) -> Iterator[Callable[[], int]]:
    """The peak RSS of `pid` (with its descendants, summed) while the block runs: the kernels' high-water
    marks, reset on entry (writing 5 to clear_refs), and a 5 ms VmRSS poller as well for kernels or
    sandboxes that refuse the reset."""
    try:
        for each in process_tree(pid):
            with open(f"/proc/{each}/clear_refs", "w") as fh:
                fh.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    polled = [rss_bytes(pid)]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.005):
            polled[0] = max(polled[0], rss_bytes(pid))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    result = [0]
    try:
        yield lambda: result[0]
    finally:
        stop.set()
        poller.join()
        hwm = status_bytes(process_tree(pid), "VmHWM") if hwm_reset else 0
        result[0] = max(hwm, polled[0])


# -- the client (the same code for fhirvault and nginx) --------------------------------------------
# A few lines of HTTP/1.1 over a plain socket rather than an HTTP library: uploads go out by sendfile and
# downloads come in by recv_into a 1 MiB buffer, so the client is not what limits either server.

@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body_bytes: int  # after undoing chunked framing
    seconds: float  # from the first byte sent to the last byte received
    body_head: bytes  # the first bytes of the body, for error notes


def transfer(url: str, method: str = "GET", headers: dict[str, str] | None = None,
             upload: Path | None = None) -> Answer:
    """One request on its own connection; the request body streams from `upload`, the response body
    is counted and thrown away (written to /dev/null)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if upload is not None:
        lines.append(f"Content-Length: {upload.stat().st_size}")
    request_head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    buffer = bytearray(READ_BLOCK)
    view = memoryview(buffer)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=TIMEOUT) as sock, \
            open(os.devnull, "wb", buffering=0) as sink:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        try:
            sock.sendall(request_head)
            if upload is not None:
                with open(upload, "rb") as fh:
                    sock.sendfile(fh)
        except OSError as exc:
            # A server may answer (413, 415, ...) and close before the body is all sent.
            send_error: OSError | None = exc
        else:
            send_error = None
        reader = cast(io.BufferedReader, sock.makefile("rb", buffering=READ_BLOCK))
        try:
            status_line = reader.readline().decode("latin-1")
        except OSError:
            if send_error is None:
                raise
            status_line = ""
        if not status_line and send_error is not None:
            return Answer(0, {}, 0, time.perf_counter() - started, f"connection broke: {send_error!r}".encode())
        status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
        answer_headers: dict[str, str] = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        head = bytearray()

        def drain(limit: int | None) -> int:
            """Reads `limit` bytes (None: to the end of the connection) into the sink."""
            got = 0
            while limit is None or got < limit:
                want = READ_BLOCK if limit is None else min(READ_BLOCK, limit - got)
                n = reader.readinto(view[:want])
                if not n:
                    break
                sink.write(view[:n])
                if len(head) < 2048:
                    head.extend(view[: min(n, 2048 - len(head))])
                got += n
            return got

        if method == "HEAD" or status in (204, 304):
            received = 0
        elif "chunked" in answer_headers.get("transfer-encoding", "").lower():
            received = 0
            while True:
                size_line = reader.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while reader.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                received += drain(size)
                reader.readline()
        elif "content-length" in answer_headers:
            received = drain(int(answer_headers["content-length"]))
        else:
            received = drain(None)
        seconds = time.perf_counter() - started
        reader.close()
    return Answer(status, answer_headers, received, seconds, bytes(head))


# -- figures ---------------------------------------------------------------------------------------

@dataclass
class Figures:
    """One system (nginx, or fhirvault in one mode) at one file size."""

    system: str
    size: int
    up_mbps: float | None = None
    down_mbps: float | None = None
    up_rss: int | None = None
    down_rss: int | None = None
    idle_rss: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class JsonRead:
    mode: str
    size: int
    mbps: float | None
    peak: int | None
    idle_rss: int | None
    response_bytes: int
    note: str = ""


def mbps(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def best_of(values: list[float]) -> float | None:
    return max(values) if values else None


# -- nginx -----------------------------------------------------------------------------------------

class Nginx:
    """nginx from apt serving `root` and accepting WebDAV PUT under /uploads/, on a free loopback port."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.root / "uploads").mkdir(parents=True, exist_ok=True)
        temp = {name: self.work / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for directory in temp.values():
            directory.mkdir(exist_ok=True)
        # As root, nginx would hand the work to `nobody`, who may not read our temporary directories.
        user = ""
        if os.geteuid() == 0:
            user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(0).gr_name};"
        conf = self.work / "nginx.conf"
        conf.write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {self.work}/nginx.pid;
error_log {self.work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    client_max_body_size 0;
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location /uploads/ {{
            dav_methods PUT DELETE;
            create_full_put_path on;
        }}
    }}
}}
""")
        log = open(self.work / "stderr.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([binary, "-p", str(self.work), "-c", str(conf), "-e",
                                      str(self.work / "error.log")], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.work / 'error.log').read_text(errors='replace')[-2000:]}")
            try:
                httpx.get(self.url + "/", timeout=1)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not answer within 15 s")

    def worker_pid(self) -> int:
        """The worker process that moves the bytes (memory is measured there)."""
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            return int(children[0])
        except (OSError, IndexError):
            return self.proc.pid

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


OCTETS = {"Content-Type": "application/octet-stream"}


def bench_nginx(nginx: Nginx, files: dict[int, Path]) -> list[Figures]:
    results = []
    for size, path in files.items():
        fig = Figures("nginx", size, idle_rss=rss_bytes(nginx.worker_pid()))
        ups, downs, up_peaks, down_peaks = [], [], [], []
        for n in range(repeats_for(size)):
            with peak_rss(nginx.worker_pid()) as peak:
                put = transfer(f"{nginx.url}/uploads/{path.name}.{n}", "PUT", OCTETS, upload=path)
            up_peaks.append(peak())
            if put.status in (201, 204):
                ups.append(mbps(size, put.seconds))
            else:
                fig.notes.append(f"PUT answered {put.status}")
            (nginx.root / "uploads" / f"{path.name}.{n}").unlink(missing_ok=True)
            with peak_rss(nginx.worker_pid()) as peak:
                got = transfer(f"{nginx.url}/{path.name}")
            down_peaks.append(peak())
            if got.status == 200 and got.body_bytes == size:
                downs.append(mbps(size, got.seconds))
            else:
                fig.notes.append(f"GET answered {got.status} with {got.body_bytes} bytes")
        fig.up_mbps, fig.down_mbps = best_of(ups), best_of(downs)
        fig.up_rss, fig.down_rss = max(up_peaks), max(down_peaks)
        results.append(fig)
        print_progress(fig)
    return results


# -- fhirvault -------------------------------------------------------------------------------------

BINARY_ID = re.compile(r"Binary/([A-Za-z0-9\-.]{1,64})")


def created_id(answer: Answer) -> str | None:
    match = BINARY_ID.search(answer.headers.get("location", ""))
    if match:
        return match.group(1)
    in_body = re.search(rb'"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"', answer.body_head)
    return in_body.group(1).decode() if in_body else None


def bench_mode(server: ServerProcess, mode: str, files: dict[int, Path],
               with_json: bool) -> tuple[list[Figures], JsonRead | None]:
    assert server.proc is not None
    pid = server.proc.pid
    auth = server.auth_headers()
    results: list[Figures] = []
    largest: tuple[int, str] | None = None
    for size, path in files.items():
        fig = Figures(mode, size, idle_rss=rss_bytes(pid))
        ups, downs, up_peaks, down_peaks = [], [], [], []
        for _ in range(repeats_for(size)):
            with peak_rss(pid) as peak:
                post = transfer(f"{server.base}/Binary", "POST", {**auth, **OCTETS}, upload=path)
            up_peaks.append(peak())
            binary_id = created_id(post) if post.status == 201 else None
            if binary_id is None:
                fig.notes.append(f"POST answered {post.status}: {post.body_head[:160]!r}")
                break
            ups.append(mbps(size, post.seconds))
            largest = (size, binary_id)
            with peak_rss(pid) as peak:
                got = transfer(f"{server.base}/Binary/{binary_id}", "GET", auth)
            down_peaks.append(peak())
            if got.status == 200 and got.body_bytes == size:
                downs.append(mbps(size, got.seconds))
            else:
                fig.notes.append(f"GET answered {got.status} with {got.body_bytes} of {size} bytes")
        fig.up_mbps, fig.down_mbps = best_of(ups), best_of(downs)
        fig.up_rss = max(up_peaks) if up_peaks else None
        fig.down_rss = max(down_peaks) if down_peaks else None
        results.append(fig)
        print_progress(fig)
    json_read = None
    if with_json and largest is not None:
        size, binary_id = largest
        idle = rss_bytes(pid)
        with peak_rss(pid) as peak:
            got = transfer(f"{server.base}/Binary/{binary_id}", "GET", {**auth, "Accept": "application/fhir+json"})
        # base64 makes 4 bytes of every 3: the response is about 4/3 of the content plus the envelope.
        ok = got.status == 200 and got.body_bytes >= size * 4 // 3 and got.body_head.lstrip().startswith(b"{")
        note = "" if ok else f"answered {got.status} with {got.body_bytes} bytes: {got.body_head[:120]!r}"
        json_read = JsonRead(mode, size, mbps(got.body_bytes, got.seconds) if ok else None, peak(), idle,
                             got.body_bytes, note)
        print(f"  json read {mode:10} {human(size):>8}: {fmt(json_read.mbps)} MB/s, "
              f"peak RSS {fmt_mib(json_read.peak)} MiB {note}", flush=True)
    return results, json_read


# -- output ----------------------------------------------------------------------------------------

def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.0f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if ours is None or not theirs else f"{ours / theirs:.2f}"


def short(notes: list[str], width: int = 70) -> str:
    text = "; ".join(n for n in notes if n)
    return text if len(text) <= width else text[: width - 3] + "..."


def print_progress(fig: Figures) -> None:
    print(f"  {fig.system:10} {human(fig.size):>8}: up {fmt(fig.up_mbps)} MB/s, down {fmt(fig.down_mbps)} MB/s, "
          f"peak RSS up {fmt_mib(fig.up_rss)} / down {fmt_mib(fig.down_rss)} MiB "
          f"{'; '.join(fig.notes)}", flush=True)


def print_table(nginx: list[Figures], ours: list[Figures], json_reads: list[JsonRead], database: str) -> None:
    by_size = {fig.size: fig for fig in nginx}
    print()
    print(f"Raw Binary transfer on loopback, database {database}; MB/s = 10^6 bytes/s, best of "
          f"{', '.join(f'{repeats_for(s)} at {human(s)}' for s in sorted({f.size for f in ours + nginx}))}; "
          "RSS in MiB (idle = before the transfer, peak = high-water mark during it)")
    head = (f"{'system':10} {'size':>8} | {'up MB/s':>8} {'x nginx':>7} | {'down MB/s':>9} {'x nginx':>7} | "
            f"{'idle RSS':>8} {'peak up':>8} {'peak down':>9} | notes")
    print(head)
    print("-" * len(head))
    for fig in sorted(nginx, key=lambda f: f.size):
        print(f"{'nginx':10} {human(fig.size):>8} | {fmt(fig.up_mbps):>8} {'':>7} | {fmt(fig.down_mbps):>9} {'':>7} | "
              f"{fmt_mib(fig.idle_rss):>8} {fmt_mib(fig.up_rss):>8} {fmt_mib(fig.down_rss):>9} | "
              f"{short(fig.notes)}")
    for fig in ours:
        ref = by_size.get(fig.size)
        print(f"{fig.system:10} {human(fig.size):>8} | {fmt(fig.up_mbps):>8} "
              f"{ratio(fig.up_mbps, ref.up_mbps if ref else None):>7} | {fmt(fig.down_mbps):>9} "
              f"{ratio(fig.down_mbps, ref.down_mbps if ref else None):>7} | {fmt_mib(fig.idle_rss):>8} "
              f"{fmt_mib(fig.up_rss):>8} {fmt_mib(fig.down_rss):>9} | {short(fig.notes)}")
    if json_reads:
        print()
        print("FHIR JSON read (Accept: application/fhir+json, base64 data) of each mode's largest Binary")
        head = f"{'mode':10} {'size':>8} | {'MB/s':>6} | {'response':>10} | {'idle RSS':>8} {'peak':>6} | notes"
        print(head)
        print("-" * len(head))
        for read in json_reads:
            print(f"{read.mode:10} {human(read.size):>8} | {fmt(read.mbps):>6} | {read.response_bytes / 1e6:>8.0f}MB | "
                  f"{fmt_mib(read.idle_rss):>8} {fmt_mib(read.peak):>6} | {short([read.note])}")
    print()
    print("Flat memory: compare each mode's peak at the largest size with its peak at the smallest "
          "(target: at most 32 MiB more).")
    for mode in dict.fromkeys(fig.system for fig in ours):
        rows = [f for f in ours if f.system == mode and f.up_mbps is not None]
        if len(rows) >= 2:
            small, large = rows[0], rows[-1]
            grow = max(large.up_rss or 0, large.down_rss or 0) - max(small.up_rss or 0, small.down_rss or 0)
            print(f"  {mode:10} peak at {human(large.size)} minus peak at {human(small.size)}: {grow / MiB:+.0f} MiB")


# -- main ------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default=ALL_SIZES, help=f"comma-separated sizes (default {ALL_SIZES})")
    parser.add_argument("--modes", default=ALL_MODES, help=f"comma-separated storage modes (default {ALL_MODES})")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--no-json", action="store_true", help="skip the FHIR JSON (base64) read")
    parser.add_argument("--workdir", type=Path, help="where files and servers live (default: a temporary directory)")
    args = parser.parse_args()
    sizes = sorted({parse_size(s) for s in args.sizes.split(",") if s.strip()})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(ALL_MODES.split(","))
    if unknown:
        parser.error(f"unknown storage modes: {', '.join(sorted(unknown))}")
    if args.database == "postgres" and not postgres_available():
        parser.error("PostgreSQL at 127.0.0.1:5432 is not reachable")

    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fv-bench-binary-", dir=args.workdir,
                                                                      ignore_cleanup_errors=True)))
        files_dir = base / "files"
        files_dir.mkdir()
        print(f"writing test files to {files_dir} ...", flush=True)
        files = {size: make_file(files_dir / f"blob-{human(size).replace(' ', '')}.bin", size) for size in sizes}

        nginx_figures: list[Figures] = []
        try:
            nginx = Nginx(files_dir, base / "nginx").start()
        except Exception as exc:
            print(f"nginx not started, no ratios: {exc}", flush=True)
        else:
            stack.callback(nginx.stop)
            print(f"nginx on {nginx.url}", flush=True)
            nginx_figures = bench_nginx(nginx, files)
            nginx.stop()

        ours: list[Figures] = []
        json_reads: list[JsonRead] = []
        seaweed: SeaweedS3 | None = None
        for mode in modes:
            mode_files = {s: p for s, p in files.items() if mode != "inline" or s <= INLINE_LIMIT}
            if not mode_files:
                continue
            settings: dict[str, object] = {"storage_mode": mode, "log_level": "warning"}
            with ExitStack() as per_mode:
                if mode == "s3":
                    if seaweed is None:
                        try:
                            seaweed = SeaweedS3(base / "seaweedfs").start()
                        except Exception as exc:
                            print(f"s3 skipped, SeaweedFS did not start: {exc}", flush=True)
                            continue
                        stack.callback(seaweed.stop)
                    settings.update(seaweed.settings(unique_bucket("fv-bench")))
                if args.database == "postgres":
                    settings["database_url"] = per_mode.enter_context(postgres_database())
                data_dir = base / f"server-{mode}"
                server = ServerProcess(data_dir, settings_env(**settings)).start()
                per_mode.callback(server.stop)
                print(f"fhirvault ({mode}) on {server.base}", flush=True)
                try:
                    figures, json_read = bench_mode(server, mode, mode_files, not args.no_json)
                except OSError as exc:
                    print(f"  {mode}: the transfer broke off: {exc!r}\n{server.log()[-1500:]}", flush=True)
                    continue
                ours += figures
                if json_read:
                    json_reads.append(json_read)
            shutil.rmtree(data_dir, ignore_errors=True)  # a 1 GiB blob per mode adds up
        print_table(nginx_figures, ours, json_reads, args.database)


if __name__ == "__main__":
    main()
