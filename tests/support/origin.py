"""Local HTTP origins for the ingestion tests: files, slow and failing answers, redirects, and listeners
that only count connections (to prove none was made)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

BLOCK = 64 * 1024


def content_block(seed: int) -> bytes:
    """A 64 KiB block that differs per seed, so a wrong offset or a dropped chunk changes the hash."""
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


def content_chunks(size: int, seed: int = 0) -> Iterator[bytes]:
    block = content_block(seed)
    left = size
    while left > 0:
        n = min(left, BLOCK)
        yield block[:n]
        left -= n


def sha1_b64(size: int, seed: int = 0) -> str:
    import base64

    h = hashlib.sha1()
    for chunk in content_chunks(size, seed):
        h.update(chunk)
    return base64.b64encode(h.digest()).decode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OriginServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.server.requests[path] += 1
        self.server.hosts.append(self.headers.get("Host", ""))
        kind, _, rest = path.strip("/").partition("/")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            getattr(self, f"_{kind}")(rest, query)

    def _file(self, rest: str, q: dict[str, str]) -> None:
        """/file/{size}[?type=..&seed=..&length=no]"""
        size = int(rest.split("/")[0])
        self.send_response(200)
        if "type" in q:
            self.send_header("Content-Type", q["type"])
        if q.get("length") == "no":
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        for chunk in content_chunks(size, int(q.get("seed", "0"))):
            self.wfile.write(chunk)
            self.server.sent[self.path] += len(chunk)
        if q.get("length") == "no":
            self.close_connection = True

    def _slow(self, rest: str, q: dict[str, str]) -> None:
        """Sends headers and a few bytes, then stalls until the origin stops."""
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.wfile.flush()
        self.server.stopping.wait(120)

    def _redirect(self, rest: str, q: dict[str, str]) -> None:
        """/redirect/{n}/{final path...}: n hops, then the final path."""
        n, _, final = rest.partition("/")
        target = f"/redirect/{int(n) - 1}/{final}" if int(n) > 1 else f"/{final}"
        if self.path.find("?") >= 0:
            target += "?" + self.path.split("?", 1)[1]
        self._redirect_to(target)

    def _to(self, rest: str, q: dict[str, str]) -> None:
        """/to?url=...: one redirect to any URL."""
        self._redirect_to(q["url"])

    def _redirect_to(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _flaky(self, rest: str, q: dict[str, str]) -> None:
        """/flaky/{key}/{size}: HTTP 500 the first `fail` (default 1) times, then the file."""
        key, _, size = rest.partition("/")
        self.server.flaky[key] += 1
        if self.server.flaky[key] <= int(q.get("fail", "1")):
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._file(size, q)

    def _gate(self, rest: str, q: dict[str, str]) -> None:
        """/gate/{name}/{size}: waits until the test calls `release(name)`, then serves the file."""
        name, _, size = rest.partition("/")
        self.server.gate(name).wait(120)
        self._file(size, q)

    def _status(self, rest: str, q: dict[str, str]) -> None:
        self.send_response(int(rest))
        self.send_header("Content-Length", "0")
        self.end_headers()


class OriginServer(http.server.ThreadingHTTPServer):
    """An HTTP origin on 127.0.0.1 in a thread; `requests` counts requests per path."""

    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.requests: Counter[str] = Counter()
        self.flaky: Counter[str] = Counter()
        self.hosts: list[str] = []
        self.sent: Counter[str] = Counter()  # body bytes written per request path (with query)
        self._gates: dict[str, threading.Event] = {}
        self._gates_lock = threading.Lock()
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def gate(self, name: str) -> threading.Event:
        with self._gates_lock:
            return self._gates.setdefault(name, threading.Event())

    def release(self, name: str) -> None:
        self.gate(name).set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> OriginServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        for gate in list(self._gates.values()):
            gate.set()
        self.shutdown()
        self.server_close()


class CountingListener:
    """A listening socket that never answers; `connections()` counts the connections made to it (the
    kernel completes them in the backlog), proof that nothing was contacted."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self._count = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return self._count
            self._count += 1
            conn.close()

    def __enter__(self) -> CountingListener:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()
