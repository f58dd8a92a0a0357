"""A small local HTTP server standing in for a token endpoint, a storage host, and the Binary
endpoints of a FHIR server, recording every request it receives (headers included)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

CHUNK = 256 * 1024


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_size: int = 0
    body_sha1_b64: str = ""


@dataclass
class StoredBlob:
    path: Path
    content_type: str
    size: int
    sha1_b64: str
    filename: str | None = None
    security_context: str | None = None


@dataclass
class StandIn:
    """State of the stand-in; `base` is its FHIR base (`{url}/fhir/R4`)."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    blobs: dict[str, StoredBlob] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    client_id: str = "standin-client"
    client_secret: str = "standin-secret"
    expires_in: int = 3600
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    require_token: bool = False
    redirect_downloads_to: str | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="standin-")))

    @property
    def base(self) -> str:
        return f"{self.url}/fhir/R4"

    def signed_url(self, blob_id: str) -> str:
        return f"{self.url}/storage/{blob_id}/1?exp=9999999999&sig=standin"

    def requests_to(self, prefix: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith(prefix)]


def _outcome(message: str, code: str = "processing") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": message}]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: StandIn

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing --------------------------------------------------------------------------
    def _body_chunks(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    piece = self.rfile.read(min(remaining, CHUNK))
                    remaining -= len(piece)
                    yield piece
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("content-length") or 0)
            while remaining:
                piece = self.rfile.read(min(remaining, CHUNK))
                if not piece:
                    return
                remaining -= len(piece)
                yield piece

    def _record(self) -> Recorded:
        parts = urlsplit(self.path)
        rec = Recorded(self.command, parts.path, parse_qs(parts.query),
                       {k.lower(): v for k, v in self.headers.items()})
        self.state.requests.append(rec)
        return rec

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/fhir+json", **(headers or {})})

    def _store_body(self, rec: Recorded) -> tuple[Path, int, str]:
        path = self.state.workdir / uuid.uuid4().hex
        sha1 = hashlib.sha1()
        size = 0
        with path.open("wb") as fh:
            for piece in self._body_chunks():
                fh.write(piece)
                sha1.update(piece)
                size += len(piece)
        rec.body_size, rec.body_sha1_b64 = size, base64.b64encode(sha1.digest()).decode()
        return path, size, rec.body_sha1_b64

    def _authorized(self) -> bool:
        if not self.state.require_token:
            return True
        auth = self.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token in self.state.issued and token not in self.state.revoked:
            return True
        self._json(401, _outcome("the bearer token is missing, expired or unknown", "login"),
                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return False

    def _serve_blob(self, blob: StoredBlob) -> None:
        start, end = 0, blob.size
        status = 200
        headers = {"Content-Type": blob.content_type, "Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("range", ""))
        if match:
            start = int(match.group(1))
            end = min(blob.size, int(match.group(2)) + 1) if match.group(2) else blob.size
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        with blob.path.open("rb") as fh:
            fh.seek(start)
            remaining = end - start
            while remaining:
                piece = fh.read(min(CHUNK, remaining))
                remaining -= len(piece)
                self.wfile.write(piece)

    # -- routes ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        rec = self._record()
        path, st = rec.path, self.state
        if path.endswith("/.well-known/smart-configuration"):
            self._json(200, {"token_endpoint": f"{st.url}/oauth2/token",
                             "grant_types_supported": ["client_credentials"]})
        elif path.startswith("/storage/"):
            blob = st.blobs.get(path.split("/")[2])
            self._serve_blob(blob) if blob else self._json(404, _outcome("no such blob"))
        elif path.startswith("/fhir/R4/"):
            if not self._authorized():
                return
            parts = path[len("/fhir/R4/"):].split("/")
            if parts[0] == "Binary" and len(parts) == 2:
                blob = st.blobs.get(parts[1])
                if blob is None:
                    self._json(404, _outcome(f"Binary/{parts[1]} is not known", "not-found"))
                elif st.redirect_downloads_to:
                    self._send(307, b"", {"Location": f"{st.redirect_downloads_to}/storage/{parts[1]}/1?sig=x"})
                else:
                    self._serve_blob(blob)
            elif parts[-1] == "$binary-access-read":
                blob = st.blobs.get(f"{parts[0]}/{parts[1]}#{rec.query.get('path', [''])[0]}")
                self._serve_blob(blob) if blob else self._json(400, _outcome("that path matches nothing"))
            elif len(parts) == 2 and f"{parts[0]}/{parts[1]}" in st.resources:
                self._json(200, st.resources[f"{parts[0]}/{parts[1]}"])
            else:
                self._json(404, _outcome(f"{'/'.join(parts)} is not known", "not-found"))
        else:
            self._json(404, _outcome("not found"))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        rec = self._record()
        path, st = rec.path, self.state
        if path == "/oauth2/token":
            for _ in self._body_chunks():
                pass
            expected = base64.b64encode(f"{st.client_id}:{st.client_secret}".encode()).decode()
            if self.headers.get("authorization") != f"Basic {expected}":
                self._send(401, b'{"error":"invalid_client"}', {"Content-Type": "application/json"})
                return
            token = f"token-{len(st.issued) + 1}"
            st.issued.append(token)
            self._send(200, json.dumps({"access_token": token, "token_type": "Bearer",
                                        "expires_in": st.expires_in}).encode(), {"Content-Type": "application/json"})
        elif path == "/fhir/R4/Binary":
            if not self._authorized():
                return
            file, size, sha1 = self._store_body(rec)
            bid = uuid.uuid4().hex
            ctype = self.headers.get("content-type", "application/octet-stream")
            st.blobs[bid] = StoredBlob(file, ctype, size, sha1, rec.query.get("_filename", [None])[0],
                                       self.headers.get("x-security-context"))
            binary: dict[str, Any] = {"resourceType": "Binary", "id": bid, "meta": {"versionId": "1"},
                                      "contentType": ctype, "url": st.signed_url(bid)}
            if st.blobs[bid].security_context:
                binary["securityContext"] = {"reference": st.blobs[bid].security_context}
            self._json(201, binary, {"Location": f"{st.base}/Binary/{bid}/_history/1"})
        elif path.endswith("/$binary-access-write"):
            if not self._authorized():
                return
            parts = path[len("/fhir/R4/"):].split("/")
            file, size, sha1 = self._store_body(rec)
            attachment_path = rec.query.get("path", [""])[0]
            ctype = self.headers.get("content-type", "")
            st.blobs[f"{parts[0]}/{parts[1]}#{attachment_path}"] = StoredBlob(file, ctype, size, sha1)
            self._json(200, {"resourceType": parts[0], "id": parts[1],
                             "content": [{"attachment": {"contentType": ctype, "size": size, "hash": sha1}}]})
        elif re.fullmatch(r"/fhir/R4/[A-Z][A-Za-z]+", path):
            if not self._authorized():
                return
            resource = json.loads(b"".join(self._body_chunks()))
            resource["id"] = uuid.uuid4().hex
            resource["meta"] = {"versionId": "1"}
            st.resources[f"{resource['resourceType']}/{resource['id']}"] = resource
            self._json(201, resource)
        else:
            for _ in self._body_chunks():
                pass
            self._json(404, _outcome("not found"))

    def do_PUT(self) -> None:
        rec = self._record()
        if not self._authorized():
            return
        key = rec.path[len("/fhir/R4/"):]
        resource = json.loads(b"".join(self._body_chunks()))
        old = self.state.resources.get(key, {"meta": {"versionId": "0"}})
        resource["meta"] = {"versionId": str(int(old["meta"]["versionId"]) + 1)}
        self.state.resources[key] = resource
        self._json(200, resource)


class StandInServer:
    """Runs a StandIn on a free loopback port in a background thread."""

    def __init__(self, **state: Any) -> None:
        self.state = StandIn(**state)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.state.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self.state

    def __exit__(self, *exc: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        shutil.rmtree(self.state.workdir, ignore_errors=True)


class _ProxyHandler(_Handler):
    target: str
    http: Any

    def _forward(self) -> None:
        rec = self._record()
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("host", "connection", "transfer-encoding", "content-length")}
        if self.headers.get("content-length"):
            headers["Content-Length"] = self.headers["content-length"]
        body = self._body_chunks() if self.command in ("POST", "PUT", "PATCH") else None
        with self.http.stream(self.command, self.target + self.path, headers=headers, content=body) as resp:
            self.send_response(resp.status_code)
            for k, v in resp.headers.multi_items():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "content-encoding"):
                    self.send_header(k, v)
            length = resp.headers.get("content-length")
            if length is not None and "content-encoding" not in resp.headers:
                self.send_header("Content-Length", length)
                self.end_headers()
                for piece in resp.iter_raw():
                    self.wfile.write(piece)
            else:
                data = resp.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        del rec

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class RecordingProxy:
    """A reverse proxy on a free loopback port that records every request (headers included) before
    passing it to `target`: start a real server with PUBLIC_BASE_URL = proxy.url, and the signed URLs
    it hands out come back through here, where the test sees what the client sent."""

    def __init__(self) -> None:
        import httpx

        self.state = StandIn()
        self._http = httpx.Client(timeout=120)
        self._handler: type[_ProxyHandler] = type("ProxyHandler", (_ProxyHandler,), {"state": self.state, "target": "",
                                                               "http": self._http})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self.state.url = self.url
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self, target: str) -> RecordingProxy:
        self._handler.target = target.rstrip("/")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._http.close()
        shutil.rmtree(self.state.workdir, ignore_errors=True)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A stand-in FHIR server that requires a bearer token from its own token endpoint."""
    with StandInServer(require_token=True) as state:
        yield state
