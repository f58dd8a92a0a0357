"""Small requests per second beside nginx, a 1 GiB raw upload beside nginx's WebDAV PUT, and the cost of
rewriting Attachment URLs on a search page: the figures of issue 17, each as a ratio to nginx in the same run.

wrk (Debian package `wrk`) drives nginx serving a 1 KiB static file and fhirvault on the same machine,
interleaved round by round so that other load on the machine touches both alike. For each kind of
request it prints req/s, p50/p99 latency, the server's CPU seconds per 1,000 requests (user + system of
the whole server process tree, from /proc) and the ratio of req/s to nginx's; with several rounds, each
figure is the median of the rounds. The plain `/metadata` row is also set beside nginx serving the same
CapabilityStatement bytes as a static file (about 800 KB: there the size of the answer, not the server, sets
the pace). Asserts nothing.

Run: .venv/bin/python bench/requests.py [--database sqlite|postgres] [--workers N] [--seconds 10]
                                        [--connections 16] [--rounds 3] [--upload-size 1G] [--skip-upload]
                                        [--skip-rewrite] [--only read,create,...] [--baseline PYTHON]

With `--baseline PYTHON` (the interpreter of another checkout, e.g. ../main/.venv/bin/python) a second
server runs that checkout's fhirvault, seeded alike, and every row is driven against both in each round
(the order alternating from round to round); a last table gives both servers' CPU seconds per 1,000
requests and their ratio, the figure that other load on the machine disturbs least.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.binary import Nginx, make_file, parse_size, transfer  # noqa: E402
from fhirvault.config import Settings  # noqa: E402
from tests.support.server import (  # noqa: E402
    ServerProcess,
    postgres_available,
    postgres_database,
    settings_env,
)

KiB = 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the server's CPU time, from /proc -------------------------------------------------------------

def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        pass
    return kids


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and every live descendant (children's own times, plus the
    times of children they have already waited for)."""
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the command: state is [0]; utime, stime, cutime, cstime are [11:15].
        total += sum(int(x) for x in fields[11:15])
        todo += _children(pid)
    return total / CLK_TCK


# -- wrk -------------------------------------------------------------------------------------------

@dataclass
class WrkRun:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx answers plus socket errors
    cpu_per_1000: float | None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _latency(text: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.MULTILINE)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(url: str, seconds: int, connections: int, script: Path | None, headers: dict[str, str],
            server_pid: int | None) -> WrkRun:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    args = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if script is not None:
        args += ["-s", str(script)]
    before = tree_cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True,
                         errors="replace").stdout
    cpu = tree_cpu_seconds(server_pid) - before if server_pid else 0.0
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkRun(requests, rps, _latency(out, "50"), _latency(out, "99"), errors,
                  1000 * cpu / requests if server_pid and requests else None)


def post_script(work: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk Lua script that sends every request as a POST with this body and these headers."""
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode('latin-1'))}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    path = work / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def _lua_string(text: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in " /.:+-_;=,{}[]" else f"\\{ord(c):03d}" for c in text) + '"'


# -- the rows of the table -------------------------------------------------------------------------

@dataclass
class Row:
    key: str
    title: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    script: Path | None = None
    runs: list[WrkRun] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def seed(server: ServerProcess, work: Path) -> list[Row]:
    """A 1 KiB Binary, a Patient, 30 Patients with a photo each (so a 20-entry page has attachments to
    rewrite), and the rows that exercise them."""
    auth = server.auth_headers()
    kib = os.urandom(KiB)
    with server.api() as api:
        r = api.post("/Binary", content=kib, headers={"Content-Type": "application/octet-stream"})
        r.raise_for_status()
        binary_id = r.json()["id"]
        patient = api.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Single"}]})
        patient.raise_for_status()
        for n in range(30):
            photo = api.post("/Binary", content=os.urandom(KiB), headers={"Content-Type": "image/png"})
            photo.raise_for_status()
            api.post("/Patient", json={
                "resourceType": "Patient", "name": [{"family": "Paged", "given": [f"P{n}"]}],
                "photo": [{"url": f"Binary/{photo.json()['id']}"}]}).raise_for_status()
        page = api.get("/Patient", params={"_count": 20, "_sort": "-_lastUpdated"})
        page.raise_for_status()
        matches = [e for e in page.json().get("entry", []) if e.get("search", {}).get("mode") == "match"]
        if len(matches) != 20 or len(page.json()["entry"]) != 20:
            raise SystemExit("the search page does not hold 20 entries: " + page.text[:300])
        signed = page.json()["entry"][0]["resource"]["photo"][0]["url"]
    if "/storage/" not in signed:
        print(f"  note: the search page's photo url is not signed ({signed}); the signed-URL row reads "
              "a fresh one through the Binary", flush=True)
    create_headers = {**auth, "Content-Type": "application/octet-stream"}
    return [
        Row("read", "raw read of a 1 KiB Binary (token)", f"{server.base}/Binary/{binary_id}", auth),
        Row("create", "create of a 1 KiB Binary", f"{server.base}/Binary",
            script=post_script(work, "create", os.urandom(KiB), create_headers)),
        Row("metadata", "GET /metadata (static)", f"{server.base}/metadata"),
        Row("metadata-gz", "GET /metadata, Accept-Encoding: gzip", f"{server.base}/metadata",
            {"Accept-Encoding": "gzip"}),
        Row("patient", "Patient read", f"{server.base}/Patient/{patient.json()['id']}", auth),
        Row("search", "search page, 20 entries with a photo each",
            f"{server.base}/Patient?_count=20&_sort=-_lastUpdated", auth),
        Row("signed", "signed-URL GET of a 1 KiB Binary", signed),
    ]


def median(values: list[float]) -> float | None:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(nginx: list[WrkRun], rows: list[Row], title: str) -> None:
    print()
    print(title)
    head = (f"{'work':44} | {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU s/1k':>8} | {'x nginx':>7} | "
            f"{'errors':>6}")
    print(head)
    print("-" * len(head))
    print(f"{'nginx, 1 KiB static file':44} | {fmt(median([r.rps for r in nginx])):>8} "
          f"{fmt(median([r.p50_ms for r in nginx]), 2):>7} {fmt(median([r.p99_ms for r in nginx]), 2):>7} "
          f"{fmt(median([r.cpu_per_1000 or 0 for r in nginx]), 3):>8} | {'1':>7} | "
          f"{sum(r.errors for r in nginx):>6}")
    for row in rows:
        runs = row.runs
        print(f"{row.title:44} | {fmt(median([r.rps for r in runs])):>8} {fmt(median([r.p50_ms for r in runs]), 2):>7} "
              f"{fmt(median([r.p99_ms for r in runs]), 2):>7} "
              f"{fmt(median([r.cpu_per_1000 for r in runs if r.cpu_per_1000 is not None]), 3):>8} | "
              f"{fmt(median(row.ratios), 4):>7} | {sum(r.errors for r in runs):>6}")


def _baseline_run(baseline: ServerProcess, row: Row, args: argparse.Namespace) -> None:
    assert baseline.proc is not None
    got = run_wrk(row.url, args.seconds, args.connections, row.script, row.headers, baseline.proc.pid)
    row.runs.append(got)
    print(f"  baseline {row.title:35} {got.rps:8.0f} req/s  CPU {fmt(got.cpu_per_1000, 3)} s/1k"
          f"{f'  ERRORS {got.errors}' if got.errors else ''}", flush=True)


def print_comparison(rows: list[Row], baseline_rows: list[Row], baseline: str) -> None:
    """Both servers' median CPU seconds per 1,000 requests and req/s, row by row, and the load average."""
    print()
    print(f"Against the baseline {baseline} (same rounds, alternating order); load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    head = f"{'work':44} | {'base s/1k':>9} {'this s/1k':>9} {'ratio':>6} | {'base req/s':>10} {'this req/s':>10}"
    print(head)
    print("-" * len(head))
    for row, base in zip(rows, baseline_rows, strict=True):
        ours = median([r.cpu_per_1000 for r in row.runs if r.cpu_per_1000 is not None])
        theirs = median([r.cpu_per_1000 for r in base.runs if r.cpu_per_1000 is not None])
        ratio = ours / theirs if ours and theirs else None
        print(f"{row.title:44} | {fmt(theirs, 3):>9} {fmt(ours, 3):>9} {fmt(ratio, 2):>6} | "
              f"{fmt(median([r.rps for r in base.runs])):>10} {fmt(median([r.rps for r in row.runs])):>10}")


# -- the large upload ------------------------------------------------------------------------------

def upload_bench(server: ServerProcess, nginx: Nginx, path: Path, rounds: int) -> None:
    """POST /Binary of the file (sendfile from disk) against nginx's WebDAV PUT of it, alternating;
    also the server's CPU seconds per GB received."""
    assert server.proc is not None
    size = path.stat().st_size
    auth = server.auth_headers()
    ours, theirs, cpu = [], [], []
    for n in range(rounds):
        put = transfer(f"{nginx.url}/uploads/{path.name}.{n}", "PUT", {"Content-Type": "application/octet-stream"},
                       upload=path)
        (nginx.root / "uploads" / f"{path.name}.{n}").unlink(missing_ok=True)
        if put.status in (201, 204):
            theirs.append(size / put.seconds / 1e6)
        before = tree_cpu_seconds(server.proc.pid)
        post = transfer(f"{server.base}/Binary", "POST", {**auth, "Content-Type": "application/octet-stream"},
                        upload=path)
        cpu.append((tree_cpu_seconds(server.proc.pid) - before) / (size / 1e9))
        if post.status == 201:
            ours.append(size / post.seconds / 1e6)
            created = json.loads(post.body_head.decode(errors="replace") or "{}") if post.body_head else {}
            if created.get("id"):
                httpx.delete(f"{server.base}/Binary/{created['id']}", headers=auth, timeout=600)
        else:
            print(f"  upload answered {post.status}: {post.body_head[:200]!r}", flush=True)
    ratios = [o / t for o, t in zip(ours, theirs, strict=False)]
    print()
    print(f"raw upload of {size / 2**30:.2f} GiB ({rounds} rounds, medians): fhirvault {fmt(median(ours))} MB/s, "
          f"nginx WebDAV PUT {fmt(median(theirs))} MB/s, ratio {fmt(median(ratios), 2)}; "
          f"server CPU {fmt(median(cpu), 2)} s per GB", flush=True)


# -- rewriting overhead ----------------------------------------------------------------------------

def rewrite_bench(base: Path, settings: dict[str, object], seconds: int, connections: int, rounds: int,
                  pythons: dict[str, str | None] | None = None) -> None:
    """The search page of 100 DocumentReferences x 3 attachments, from two servers alike but for
    REWRITE_ATTACHMENT_URLS, driven by wrk in alternating rounds (so machine load touches both alike);
    the overhead is the on/off ratio of the median time per page (req/s read the other way round) and of
    the server's CPU per page. `pythons` names the checkouts to measure (label -> interpreter, None for
    this one); all of their servers take turns in every round."""
    pythons = pythons or {"": None}
    servers: dict[tuple[str, bool], ServerProcess] = {}
    try:
        for label, python in pythons.items():
            for rewrite in (False, True):
                server = ServerProcess(base / f"rewrite-{label or 'this'}-{rewrite}", settings_env(
                    **settings, rewrite_attachment_urls=rewrite), workers=1, python=python).start()
                servers[label, rewrite] = server
                with server.api() as api:
                    ids = [api.post("/Binary", content=f"attachment {i}".encode() * 20,
                                    headers={"Content-Type": "image/png"}).json()["id"] for i in range(300)]
                    for n in range(100):
                        api.post("/DocumentReference", json={
                            "resourceType": "DocumentReference", "status": "current",
                            "content": [{"attachment": {"url": f"Binary/{ids[3 * n + k]}"}} for k in range(3)]},
                        ).raise_for_status()
        rps: dict[tuple[str, bool], list[float]] = {key: [] for key in servers}
        cpu: dict[tuple[str, bool], list[float]] = {key: [] for key in servers}
        errors = dict.fromkeys(servers, 0)
        for n in range(rounds):
            # alternate the order, so that a change of machine load mid-round touches every server alike
            for key, server in sorted(servers.items(), reverse=n % 2 == 1):
                assert server.proc is not None
                got = run_wrk(f"{server.base}/DocumentReference?_count=100", seconds, connections, None,
                              server.auth_headers(), server.proc.pid)
                rps[key].append(got.rps)
                if got.cpu_per_1000 is not None:
                    cpu[key].append(got.cpu_per_1000)
                errors[key] += got.errors
        for label in pythons:
            off, on = median(rps[label, False]), median(rps[label, True])
            cpu_off, cpu_on = median(cpu[label, False]), median(cpu[label, True])
            if not (off and on):
                continue
            # req/s move with whatever else the machine runs; the server's CPU seconds per page do much less
            cpu_overhead = f"{100 * (cpu_on / cpu_off - 1):+.1f} %" if cpu_off and cpu_on else "-"
            print(f"{label + ': ' if label else ''}search page of 100 resources x 3 attachments, wrk -c{connections} "
                  f"-d{seconds}s, median of {rounds} alternating rounds, one process each: rewriting off {off:.1f} "
                  f"req/s, on {on:.1f} req/s, overhead {100 * (off / on - 1):+.1f} %; server CPU per page off "
                  f"{fmt(cpu_off, 2)} ms, on {fmt(cpu_on, 2)} ms, overhead {cpu_overhead} (errors or timeouts: "
                  f"off {errors[label, False]}, on {errors[label, True]}; load average "
                  f"{os.getloadavg()[0]:.2f})", flush=True)
    finally:
        for server in servers.values():
            server.stop()


# -- main ------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, help="passed to fhirvault serve (default: its own default)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row; medians are printed")
    parser.add_argument("--upload-size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--upload-rounds", type=int, default=3)
    parser.add_argument("--skip-upload", action="store_true")
    parser.add_argument("--skip-rewrite", action="store_true")
    parser.add_argument("--rewrite-reads", type=int, default=200,
                        help="sequential reads of bench/signed_urls.py's rewriting measure")
    parser.add_argument("--only", help="comma-separated row keys: read,create,metadata,metadata-gz,patient,search,"
                                       "signed")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--baseline", help="python of another checkout whose fhirvault runs beside this one")
    args = parser.parse_args()
    if args.database == "postgres" and not postgres_available():
        parser.error("PostgreSQL at 127.0.0.1:5432 is not reachable")

    with ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fv-bench-requests-", dir=args.workdir,
                                                                      ignore_cleanup_errors=True)))
        files = base / "files"
        files.mkdir()
        make_file(files / "small.bin", KiB)
        nginx = Nginx(files, base / "nginx").start()
        stack.callback(nginx.stop)
        # The defaults of `fhirvault serve`, access log included; the test harness's small PostgreSQL pool
        # (two kept connections, for suites of many servers) is set back to serve's own.
        settings: dict[str, object] = {name: Settings.model_fields[name].default
                                       for name in ("database_pool_size", "database_max_overflow")}
        if args.database == "postgres":
            settings["database_url"] = stack.enter_context(postgres_database())
        server = ServerProcess(base / "server", settings_env(**settings), workers=args.workers)
        server.start()
        stack.callback(server.stop)
        assert server.proc is not None
        rows = seed(server, base)
        baseline: ServerProcess | None = None
        baseline_rows: list[Row] = []
        if args.baseline:
            if args.database == "postgres":
                settings["database_url"] = stack.enter_context(postgres_database())
            baseline = ServerProcess(base / "baseline", settings_env(**settings), workers=args.workers,
                                     python=args.baseline)
            baseline.start()
            stack.callback(baseline.stop)
            (base / "baseline-scripts").mkdir()
            baseline_rows = seed(baseline, base / "baseline-scripts")
        if args.only:
            keys = set(args.only.split(","))
            rows = [r for r in rows if r.key in keys]
            baseline_rows = [r for r in baseline_rows if r.key in keys]
        nginx_runs: list[WrkRun] = []
        nginx_pid = nginx.proc.pid if nginx.proc else None
        # The plain CapabilityStatement lists every search parameter and _include/_revinclude value of 146
        # types (about 750 KB): beside the 1 KiB file, nginx also serves those same bytes as a static file.
        statement = httpx.get(f"{server.base}/metadata", timeout=60).content
        (files / "metadata.json").write_bytes(statement)
        same_bytes: list[WrkRun] = []
        for n in range(args.rounds):
            reference = run_wrk(f"{nginx.url}/small.bin", args.seconds, args.connections, None, {}, nginx_pid)
            nginx_runs.append(reference)
            print(f"round {n + 1}: nginx {reference.rps:.0f} req/s", flush=True)
            if any(row.key == "metadata" for row in rows):
                same_bytes.append(run_wrk(f"{nginx.url}/metadata.json", args.seconds, args.connections, None, {},
                                          nginx_pid))
                print(f"  nginx, the CapabilityStatement as a file  {same_bytes[-1].rps:8.0f} req/s", flush=True)
            for i, row in enumerate(rows):
                if baseline is not None and n % 2 == 0:
                    _baseline_run(baseline, baseline_rows[i], args)
                got = run_wrk(row.url, args.seconds, args.connections, row.script, row.headers, server.proc.pid)
                row.runs.append(got)
                row.ratios.append(got.rps / reference.rps)
                print(f"  {row.title:44} {got.rps:8.0f} req/s  p50 {got.p50_ms:6.2f} ms  p99 {got.p99_ms:7.2f} ms  "
                      f"CPU {fmt(got.cpu_per_1000, 3)} s/1k  x nginx {got.rps / reference.rps:.4f}"
                      f"{f'  ERRORS {got.errors}' if got.errors else ''}", flush=True)
                if baseline is not None and n % 2 == 1:
                    _baseline_run(baseline, baseline_rows[i], args)
        workers = args.workers or "default"
        print_table(nginx_runs, rows, f"Small requests, database {args.database}, fhirvault serve workers={workers}; "
                    f"wrk -t2 -c{args.connections} -d{args.seconds}s, median of {args.rounds} rounds; "
                    f"CPU s/1k = server CPU seconds per 1,000 requests")
        plain = next((row for row in rows if row.key == "metadata"), None)
        if plain is not None and same_bytes:
            ours, theirs = median([r.rps for r in plain.runs]), median([r.rps for r in same_bytes])
            print(f"GET /metadata without gzip ({len(statement) / 1000:.0f} KB): fhirvault {fmt(ours)} req/s, nginx "
                  f"serving the same bytes as a static file {fmt(theirs)} req/s, ratio "
                  f"{fmt(ours / theirs if ours and theirs else None, 3)}")
        if baseline is not None:
            print_comparison(rows, baseline_rows, args.baseline)
        if not args.skip_upload:
            upload_bench(server, nginx, make_file(files / "upload.bin", args.upload_size), args.upload_rounds)
            (files / "upload.bin").unlink()
    if not args.skip_rewrite:
        from bench.signed_urls import search_bench

        print()
        with tempfile.TemporaryDirectory(prefix="fv-bench-rewrite-", dir=args.workdir,
                                         ignore_cleanup_errors=True) as tmp:
            pythons: dict[str, str | None] = {"this": None, "baseline": args.baseline} if args.baseline else {"": None}
            rewrite_bench(Path(tmp), {}, args.seconds, args.connections, args.rounds, pythons)  # on SQLite
        search_bench(args.rewrite_reads)


if __name__ == "__main__":
    main()
