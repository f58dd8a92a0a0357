"""Resumable Binary uploads with tus 1.0 (`{FHIR base}/Binary/$upload`) for both clients.

An upload is remembered in a small state file (by default under `~/.cache/fhirvault/uploads/`), keyed
by the server, the file's absolute path, size and modification time; an interrupted upload (a cut
connection, a killed process) resumes from the offset the server reports, and the progress callback
starts from there. The protocol steps are written once, as an operation (see exchange.py) that also
receives the failures it can recover from; `run_sync` / `run_async` drive it on either client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

import httpx

from fhirvault.client.errors import FhirError, GoneError, NotFoundError, simple_outcome
from fhirvault.client.exchange import FHIR_JSON, Call, Operation, Reply
from fhirvault.client.transfer import ProgressCallback, UploadBody, file_slice, guess_content_type, shifted_progress

TUS = {"Tus-Resumable": "1.0.0"}
DEFAULT_STATE_DIR = Path.home() / ".cache" / "fhirvault" / "uploads"
# Answers after which the upload goes on from the server's offset: a conflict on the offset (409), a
# PATCH still finishing on the server (423), and the server or a proxy briefly away (5xx).
RETRY_STATUSES = frozenset({409, 423, 500, 502, 503, 504})
# Failures in a row, without progress, before giving up; the pause grows with each, up to MAX_PAUSE.
MAX_FAILURES = 8
MAX_PAUSE = 10.0
READ_CHUNK = 1024 * 1024

# What the read after the last PATCH asks for: the Binary's description, without its bytes.
DESCRIBING_ELEMENTS = "id,meta,contentType,securityContext"
# The meta extension in which fhirvault keeps a Binary's file name (fhirvault.fhir.binary).
FILENAME_EXTENSION_URL = "urn:fhirvault:binary-filename"

Resource = dict[str, Any]


class FinalRead(Call):
    """The read of the Binary once it exists: every failure of it goes back into the operation (which
    then answers with the Binary it knows), never out of the upload."""


class FhirClient(Protocol):
    """What a resumable upload needs of fhirvault.client.FhirClient (its driver, which applies the
    token, redirect and error rules)."""

    base_url: str

    def _exchange(self, call: Call) -> Reply: ...


class AsyncFhirClient(Protocol):
    """What a resumable upload needs of fhirvault.client.AsyncFhirClient."""

    base_url: str

    async def _exchange(self, call: Call) -> Reply: ...


class UploadState:
    """Where one file's unfinished upload is remembered: a JSON file named by a hash of the server's
    FHIR base, the file's absolute path, size and modification time (a changed file starts anew)."""

    def __init__(self, base_url: str, path: Path, state_dir: Path | None = None) -> None:
        stat = path.stat()
        self.size = stat.st_size
        key = "\n".join([base_url, str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)])
        self.file = (state_dir or DEFAULT_STATE_DIR) / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")
        self.path = path

    def load(self) -> str | None:
        """The upload URL of an earlier attempt, if any."""
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        url = data.get("url") if isinstance(data, dict) else None
        return url if isinstance(url, str) else None

    def save(self, url: str) -> None:
        """Remembers `url` as this file's upload: written atomically, mode 0600 (it names the server and
        the file) in a directory made 0700, whatever the umask."""
        self.file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.file.with_suffix(".tmp")
        text = json.dumps({"url": url, "path": str(self.path.resolve()), "size": self.size})
        # Created 0600 from the start (never readable by others, even for a moment); a leftover temp
        # file of a killed process is replaced, and fchmod fixes its mode too.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(text)
        os.replace(temp, self.file)

    def clear(self) -> None:
        """Forgets the upload (the Binary exists, or the server no longer knows the upload)."""
        self.file.unlink(missing_ok=True)


def resumable_upload(base: str, path: Path, state: UploadState, *, content_type: str | None = None,
                     filename: str | None = None, security_context: str | None = None,
                     chunk_size: int | None = None,
                     on_progress: ProgressCallback | None = None) -> Operation[Resource]:
    """Upload the file at `path` with tus and return the Binary the server made of it. Failures the
    driver throws in (RETRY_STATUSES, connection errors) make it ask the server for the offset and go
    on from there; `chunk_size` bytes per PATCH (None: all that remain in one)."""
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError("chunk_size must be a positive number of bytes")
    size = state.size
    filename = filename or path.name
    content_type = content_type or guess_content_type(filename)
    url = state.load()
    offset = 0
    binary_id: str | None = None
    version_url: str | None = None
    if url is not None:
        try:
            reply = yield Call("HEAD", url, headers=dict(TUS))
            offset, binary_id, version_url = _progress_of(reply, base)
            if int(reply.headers.get("upload-length", -1)) != size:
                url = None
        except (NotFoundError, GoneError):
            url = None  # expired or removed on the server: start anew
    if url is None:
        metadata = {"contentType": content_type, "filename": filename}
        if security_context:
            metadata["securityContext"] = security_context
        reply = yield Call("POST", f"{base}/Binary/$upload", headers={
            **TUS, "Upload-Length": str(size), "Upload-Metadata": _metadata(metadata)})
        url = reply.headers.get("location")
        if not url:
            raise FhirError(reply.status, simple_outcome("the server created the upload but gave no Location"))
        url = str(httpx.URL(base).join(url))
        state.save(url)
        offset, binary_id, version_url = _progress_of(reply, base)
    if on_progress is not None:
        on_progress(offset, size)
    ask = False
    while binary_id is None:
        if ask:
            try:
                reply = yield Call("HEAD", url, headers=dict(TUS))
            except (FhirError, httpx.TransportError):
                continue  # the driver counts the failures and pauses
            ask = False
            offset, binary_id, version_url = _progress_of(reply, base)
            continue
        if offset >= size and size > 0:
            raise FhirError(0, simple_outcome(f"the upload reached {offset} of {size} bytes but the server "
                                              "did not name the Binary it made"))
        length = size - offset if chunk_size is None else min(chunk_size, size - offset)
        body = UploadBody(file_slice(path, offset, length, READ_CHUNK), shifted_progress(on_progress, offset, size))
        try:
            reply = yield Call("PATCH", url, upload=body, headers={
                **TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset),
                "Content-Length": str(length)})
        except (FhirError, httpx.TransportError):
            ask = True  # how far did it get? the server says
            continue
        offset, binary_id, version_url = _progress_of(reply, base)
    state.clear()
    made = _binary_without_data(binary_id, version_url, content_type, filename, security_context)
    # The Binary exists: read its description (never its bytes, which would come as base64 `data`, and
    # which SCAN_MODE=block holds back while the scan is pending). Whatever this read meets, the upload
    # succeeded: the Binary as the uploads' answers described it is returned then.
    read_url = version_url or f"{base}/Binary/{binary_id}"
    try:
        reply = yield FinalRead("GET", read_url, params=[("_elements", DESCRIBING_ELEMENTS)],
                                headers={"Accept": FHIR_JSON})
    except (FhirError, httpx.TransportError):
        return made
    body = reply.body
    if not isinstance(body, dict) or body.get("resourceType") != "Binary" or body.get("id") != binary_id:
        return made
    body.pop("data", None)
    return _unsubsetted(body)


def resumable_upload_sync(client: FhirClient, data: object, *, state_dir: Path | None = None,
                          **options: Any) -> Resource:
    """FhirClient.create_binary(..., resumable=True): TypeError unless `data` is a Path."""
    path = _path_of(data)
    state = UploadState(client.base_url, path, state_dir)
    return run_sync(client, resumable_upload(client.base_url, path, state, **options))


async def resumable_upload_async(client: AsyncFhirClient, data: object, *, state_dir: Path | None = None,
                                 **options: Any) -> Resource:
    """AsyncFhirClient.create_binary(..., resumable=True): TypeError unless `data` is a Path."""
    path = _path_of(data)
    state = UploadState(client.base_url, path, state_dir)
    return await run_async(client, resumable_upload(client.base_url, path, state, **options))


def _path_of(data: object) -> Path:
    if not isinstance(data, Path):
        raise TypeError("a resumable upload needs the file as a pathlib.Path (its state is kept by path)")
    return data


def run_sync(client: FhirClient, op: Operation[Resource]) -> Resource:
    """Drive a resumable upload on the synchronous client, throwing recoverable failures into it."""
    failures, pause = 0, 0.0
    try:
        call = next(op)
        while True:
            time.sleep(pause)
            try:
                outcome: Reply | Exception = client._exchange(call)
            except (FhirError, httpx.TransportError) as exc:
                outcome = exc
            call, failures, pause = _advance(op, call, outcome, failures)
    except StopIteration as done:
        result: Resource = done.value
        return result


async def run_async(client: AsyncFhirClient, op: Operation[Resource]) -> Resource:
    """As run_sync, on the asynchronous client."""
    failures, pause = 0, 0.0
    try:
        call = next(op)
        while True:
            await asyncio.sleep(pause)
            try:
                outcome: Reply | Exception = await client._exchange(call)
            except (FhirError, httpx.TransportError) as exc:
                outcome = exc
            call, failures, pause = _advance(op, call, outcome, failures)
    except StopIteration as done:
        result: Resource = done.value
        return result


def _advance(op: Operation[Resource], call: Call, outcome: Reply | Exception,
             failures: int) -> tuple[Call, int, float]:
    """The operation's next call, the failures in a row so far and the pause before that call. A failure
    it cannot recover from (or too many in a row) is raised; a PATCH that got through resets the count."""
    if isinstance(outcome, Exception):
        if isinstance(call, FinalRead):
            return op.throw(outcome), failures, 0.0
        failures = _count_failure(outcome, failures)
        return op.throw(outcome), failures, _pause(failures)
    return op.send(outcome), 0 if call.method == "PATCH" else failures, 0.0


def _count_failure(exc: Exception, failures: int) -> int:
    """Failures so far; re-raises what cannot be recovered from by asking for the offset again."""
    if isinstance(exc, FhirError) and exc.status not in RETRY_STATUSES:
        raise exc
    if failures + 1 >= MAX_FAILURES:
        raise exc
    return failures + 1


def _pause(failures: int) -> float:
    return 0.0 if failures <= 1 else min(MAX_PAUSE, 0.5 * 2 ** (failures - 2))


def _progress_of(reply: Reply, base: str) -> tuple[int, str | None, str | None]:
    """Upload-Offset, and once the upload is complete the Binary's id (X-Binary-Id) and version URL
    (Content-Location, absolute), from a tus answer."""
    offset = reply.headers.get("upload-offset")
    location = reply.headers.get("content-location")
    version_url = str(httpx.URL(base).join(location)) if location else None
    return (int(offset) if offset is not None else 0), reply.headers.get("x-binary-id"), version_url


def _binary_without_data(binary_id: str, version_url: str | None, content_type: str, filename: str,
                         security_context: str | None) -> Resource:
    """The Binary a finished upload made, as its tus answers and the upload's own metadata describe it
    (id, meta.versionId from the Content-Location `.../_history/{vid}`, contentType, securityContext, the
    file name extension): what create_binary returns when the server's description cannot be read."""
    meta: dict[str, Any] = {"extension": [{"url": FILENAME_EXTENSION_URL, "valueString": filename}]}
    if version_url and "/_history/" in version_url:
        meta["versionId"] = version_url.rsplit("/_history/", 1)[1]
    resource: Resource = {"resourceType": "Binary", "id": binary_id, "meta": meta, "contentType": content_type}
    if security_context:
        resource["securityContext"] = {"reference": security_context.strip()}
    return resource


def _unsubsetted(resource: Resource) -> Resource:
    """`resource` without the SUBSETTED tag `_elements` adds: only `data` was left out, and create_binary
    promises the Binary without `data` (as a plain `POST /Binary` answers it)."""
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("tag"), list):
        tags = [t for t in meta["tag"] if not (isinstance(t, dict) and t.get("code") == "SUBSETTED")]
        if tags:
            meta["tag"] = tags
        else:
            del meta["tag"]
    return resource


def _metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode('utf-8')).decode('ascii')}" for k, v in values.items())
