"""Direct uploads to the object store: fhirvault's `Binary/$upload-url` and `Binary/$upload-complete` (s3
mode), written once as an operation for both clients (see exchange.py). The bytes go to the store's
presigned URLs, never through the FHIR server, and never with the bearer token."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fhirvault.client.errors import FhirError, simple_outcome
from fhirvault.client.exchange import FHIR_JSON, Call, Operation
from fhirvault.client.transfer import (
    CHUNK_SIZE,
    ProgressCallback,
    UploadBody,
    file_slice,
    guess_content_type,
    shifted_progress,
)

Resource = dict[str, Any]

UPLOAD_URL = "upload-url"
UPLOAD_COMPLETE = "upload-complete"
_JSON_HEADERS = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
# The completion's timeout: at least this many seconds, and room for reading back at this many bytes/s.
COMPLETION_TIMEOUT = 120.0
READ_BACK_PACE = 10 * 1024 * 1024


class DirectUploadNotOffered(FhirError):
    """The server's CapabilityStatement does not offer direct uploads (fhirvault offers them only in s3
    storage mode); nothing was sent. Status 0: no HTTP error."""


class DirectSource:
    """The content of a direct upload: a file (`pathlib.Path`) or bytes, whose size and hashes must be
    known before the first byte goes up, and whose slices can be read for the parts. Reading a file
    for its hashes reads it once, in chunks, before the upload."""

    def __init__(self, data: Path | bytes | bytearray | memoryview) -> None:
        if isinstance(data, Path):
            self.path: Path | None = data
            self.data: bytes | None = None
            self.size = data.stat().st_size
            self.name: str | None = data.name
        elif isinstance(data, bytes | bytearray | memoryview):
            self.path, self.data, self.size, self.name = None, bytes(data), memoryview(data).nbytes, None
        else:
            raise TypeError(f"a direct upload needs a Path or bytes (its size and hash are sent first), "
                            f"not a {type(data).__name__}")
        sha256, sha1 = hashlib.sha256(), hashlib.sha1()
        for chunk in self.chunks(0, self.size):
            sha256.update(chunk)
            sha1.update(chunk)
        self.sha256_b64 = base64.b64encode(sha256.digest()).decode("ascii")
        self.sha1_b64 = base64.b64encode(sha1.digest()).decode("ascii")  # R4 Attachment.hash

    def chunks(self, offset: int, length: int) -> Iterator[bytes]:
        """The bytes [offset, offset + length), in chunks of at most CHUNK_SIZE."""
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(offset, offset + length, CHUNK_SIZE):
                yield bytes(view[start:min(start + CHUNK_SIZE, offset + length)])
            return
        assert self.path is not None
        yield from file_slice(self.path, offset, length)


@dataclass(frozen=True)
class _Put:
    url: str
    size: int
    number: int


def offers_direct_upload(capability: Any) -> bool:
    """Whether a CapabilityStatement lists both direct upload operations on Binary."""
    if not isinstance(capability, dict):
        return False
    for rest in capability.get("rest") or []:
        for entry in (rest or {}).get("resource") or []:
            if isinstance(entry, dict) and entry.get("type") == "Binary":
                names = {op.get("name") for op in entry.get("operation") or [] if isinstance(op, dict)}
                return {UPLOAD_URL, UPLOAD_COMPLETE} <= names
    return False


def create_binary_direct(base: str, source: DirectSource, *, content_type: str | None = None,
                         filename: str | None = None, security_context: str | None = None,
                         on_progress: ProgressCallback | None = None) -> Operation[Resource]:
    """Upload `source` straight to the server's object store and return the created Binary (as POST
    /Binary answers it). DirectUploadNotOffered, before any byte is sent, when the server does not
    offer direct uploads; the store's refusal of a PUT (expired URL, wrong bytes) raises FhirError."""
    capability = yield Call("GET", f"{base}/metadata", headers={"Accept": FHIR_JSON}, authenticated=False)
    if not offers_direct_upload(capability.body):
        raise DirectUploadNotOffered(0, simple_outcome(
            f"the server at {base} does not offer direct uploads to its object store (its CapabilityStatement "
            "lists no Binary $upload-url; fhirvault offers it in s3 storage mode only); upload without "
            "--direct / create_binary_direct to send the bytes through the FHIR API", "not-supported"))
    filename = filename or source.name
    parameters: list[Resource] = [
        {"name": "contentType", "valueCode": content_type or guess_content_type(filename)},
        {"name": "size", "valueDecimal": source.size},
        {"name": "sha256", "valueBase64Binary": source.sha256_b64},
    ]
    if security_context:
        parameters.append({"name": "securityContext", "valueReference": {"reference": security_context}})
    if filename:
        parameters.append({"name": "filename", "valueString": filename})
    reply = yield Call("POST", f"{base}/Binary/$upload-url", headers=dict(_JSON_HEADERS),
                       json={"resourceType": "Parameters", "parameter": parameters})
    upload_id, headers, puts = _ticket(reply.body)
    offset = 0
    for put in puts:
        body = UploadBody(source.chunks(offset, put.size), shifted_progress(on_progress, offset, source.size))
        body.total = put.size
        # Not to the FHIR base, so no token goes along (carries_token); the URL carries its own authority.
        yield Call("PUT", put.url, headers=dict(headers), upload=body, authenticated=False)
        offset += put.size
    # The server reads the whole object back before it answers: allow for that at a slow store's pace.
    done = yield Call("POST", f"{base}/Binary/$upload-complete", headers=dict(_JSON_HEADERS),
                      json={"resourceType": "Parameters", "parameter": [{"name": "upload", "valueString": upload_id}]},
                      timeout=max(COMPLETION_TIMEOUT, source.size / READ_BACK_PACE))
    if not isinstance(done.body, dict) or done.body.get("resourceType") != "Binary":
        raise FhirError(done.status, simple_outcome("the server completed the upload without answering its Binary"))
    binary: Resource = done.body
    return binary


def direct_attachment(binary: Resource, source: DirectSource, filename: str | None) -> Resource:
    """The Attachment pointing at a Binary uploaded directly; size and hash are those of `source`."""
    attachment: Resource = {"contentType": binary.get("contentType") or "application/octet-stream",
                            "url": f"Binary/{binary['id']}"}
    if filename or source.name:
        attachment["title"] = filename or source.name
    attachment["size"] = source.size
    attachment["hash"] = source.sha1_b64
    return attachment


def _ticket(body: Any) -> tuple[str, dict[str, str], list[_Put]]:
    """(upload id, headers every PUT carries, the PUTs in content order) of an $upload-url answer."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(0, simple_outcome("the server answered $upload-url without a Parameters resource"))
    upload_id: str | None = None
    headers: dict[str, str] = {}
    puts: list[_Put] = []
    for p in body.get("parameter") or []:
        name = p.get("name")
        if name == "upload":
            upload_id = p.get("valueString")
        elif name == "header":
            key, _, value = str(p.get("valueString", "")).partition(":")
            headers[key.strip()] = value.strip()
        elif name == "part":
            parts = {q.get("name"): q for q in p.get("part") or []}
            puts.append(_Put(str(parts["url"]["valueUri"]), int(parts["size"]["valueInteger"]),
                             int((parts.get("number") or {}).get("valuePositiveInt", 1))))
    if not upload_id or not puts:
        raise FhirError(0, simple_outcome("the server's $upload-url answer has no upload id or no URL"))
    return upload_id, headers, sorted(puts, key=lambda put: put.number)
