"""tus 1.0 resumable uploads at `{FHIR base}/Binary/$upload`: Core, Creation, Creation With Upload,
Expiration, Checksum (sha1, sha256) and Termination (https://tus.io/protocols/resumable-upload).

The protocol's headers are read and written here; the use case is service/uploads.py. Answers carry
no body but for errors, which are OperationOutcomes like everywhere else. When the last byte arrives,
the answer names the new Binary: `X-Binary-Id`, `Content-Location` (its version URL) and a
`Link: <signed url>; rel="alternate"`, as `POST /Binary` gives; HEAD repeats the first two.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from collections.abc import AsyncIterator
from email.utils import formatdate

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from fhirvault.errors import FhirVaultError, Invalid, NotFound, PreconditionFailed, Unsupported
from fhirvault.fhir.binary import DEFAULT_CONTENT_TYPE, check_reference
from fhirvault.fhir.r4 import whole_number
from fhirvault.http.disposition import safe_filename
from fhirvault.http.fhir_api import context
from fhirvault.http.responses import error_response
from fhirvault.http.state import vault
from fhirvault.service.uploads import CHECKSUM_ALGORITHMS, AppendResult, Checksum, UploadRow

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,expiration,checksum,termination"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
# Upload-Metadata keys and what they set; tus clients name the type and the file name differently
# (tus-js-client examples use filetype/filename, Uppy sends type/name as well), so each has aliases.
CONTENT_TYPE_KEYS = ("contentType", "filetype", "type")
FILENAME_KEYS = ("filename", "name")
SECURITY_CONTEXT_KEY = "securityContext"
# What a browser tus client must be allowed to read from the answers (CORS).
EXPOSED_HEADERS = ("Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, "
                   "Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Location, "
                   "Content-Location, X-Binary-Id, Link")
ALLOWED_HEADERS = ("Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Metadata, "
                   "Upload-Offset, Upload-Checksum, Upload-Defer-Length, Upload-Concat, X-Requested-With")


def _base_headers(request: Request) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    origin = vault(request).settings.upload_cors_origin
    if origin:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return headers


def _failed(request: Request, exc: FhirVaultError, extra: dict[str, str] | None = None) -> Response:
    response = error_response(exc)
    response.headers.update({**_base_headers(request), **(extra or {})})
    if isinstance(exc, PreconditionFailed):
        response.headers["Tus-Version"] = TUS_VERSION
    return response


def upload_url(request: Request, upload_id: str) -> str:
    """The URL of one tus upload, `{FHIR base}/Binary/$upload/{id}` (the Location of its creation)."""
    return f"{context(request).base_url}/Binary/$upload/{upload_id}"


async def options(request: Request) -> Response:
    """tus discovery (and the CORS preflight of browser clients); needs no token."""
    settings = vault(request).settings
    headers = {**_base_headers(request), "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
               "Tus-Max-Size": str(settings.max_binary_bytes),
               "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)}
    if settings.upload_cors_origin:
        headers["Access-Control-Allow-Methods"] = "POST, HEAD, PATCH, DELETE, OPTIONS"
        headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        headers["Access-Control-Max-Age"] = "600"
    return Response(status_code=204, headers=headers)


async def create(request: Request) -> Response:
    """POST: a new upload (Creation); with a body, its first bytes too (Creation With Upload)."""
    try:
        _require_tus(request)
        if request.headers.get("upload-defer-length") is not None:
            raise Invalid("Upload-Defer-Length is not supported (no creation-defer-length extension): "
                          "send Upload-Length")
        if request.headers.get("upload-concat") is not None:
            raise Invalid("Upload-Concat is not supported (no concatenation extension)")
        length = _whole(request.headers.get("upload-length"), "Upload-Length")
        raw_metadata = request.headers.get("upload-metadata") or ""
        metadata = parse_metadata(raw_metadata)
        content_type = next((metadata[k] for k in CONTENT_TYPE_KEYS if metadata.get(k)), DEFAULT_CONTENT_TYPE)
        filename = safe_filename(next((metadata[k] for k in FILENAME_KEYS if metadata.get(k)), None))
        security_context = None
        if metadata.get(SECURITY_CONTEXT_KEY):
            try:
                security_context = check_reference(metadata[SECURITY_CONTEXT_KEY], "securityContext")
            except ValueError as exc:
                raise Invalid(str(exc)) from None
        declared = _body_length(request)
        if declared != 0:
            _require_offset_stream(request)
        if declared is not None and declared > length:
            raise Invalid(f"The body of {declared} bytes goes past the Upload-Length of {length}")
        checksum = _checksum(request)
        v = vault(request)
        ctx = context(request)
        upload = await v.uploads.create(ctx, length=length, content_type=content_type, filename=filename,
                                        security_context=security_context, metadata=raw_metadata)
        headers = {**_base_headers(request), "Location": upload_url(request, upload.id),
                   "Upload-Expires": _http_date(upload.expires)}
        if declared == 0 and length != 0:
            return Response(status_code=201, headers=headers)
        try:
            result = await v.uploads.append(ctx, upload.id, 0, _until_gone(request), declared=declared,
                                            checksum=checksum)
        except FhirVaultError:
            # The body of the creation request was refused (a chunked body past Upload-Length, a checksum
            # that does not match...): the request leaves nothing behind, and its answer names no upload.
            await _abandon(request, upload.id)
            raise
        headers.update(await _progress_headers(request, result))
        return Response(status_code=201, headers=headers)
    except FhirVaultError as exc:
        return _failed(request, exc)


async def _abandon(request: Request, upload_id: str) -> None:
    """Remove the upload a failed creation request made, with its bytes (gone already when completing it
    failed: see UploadService._complete)."""
    with contextlib.suppress(NotFound):
        await vault(request).uploads.terminate(context(request), upload_id)


def _upload_id(request: Request) -> str:
    """The upload id of the path: fhirvault's ids are 32 hex digits, anything else names no upload."""
    upload_id = str(request.path_params["upload_id"])
    if not UPLOAD_ID.fullmatch(upload_id):
        raise NotFound(f"There is no upload {upload_id[:40]!r}")
    return upload_id


async def head(request: Request) -> Response:
    """HEAD: how far the upload has come (its offset), and the Binary once complete."""
    try:
        _require_tus(request)
        upload = await vault(request).uploads.settled_status(context(request), _upload_id(request))
    except FhirVaultError as exc:
        response = _failed(request, exc)
        return Response(status_code=response.status_code, headers=dict(response.headers))
    headers = {**_base_headers(request), "Upload-Offset": str(upload.offset), "Upload-Length": str(upload.length),
               "Upload-Expires": _http_date(upload.expires)}
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    headers.update(_binary_headers(request, upload))
    return Response(status_code=200, headers=headers)


async def patch(request: Request) -> Response:
    """PATCH: the bytes at Upload-Offset (Core), verified by Upload-Checksum when sent (Checksum)."""
    try:
        _require_tus(request)
        _require_offset_stream(request)
        offset = _whole(request.headers.get("upload-offset"), "Upload-Offset")
        checksum = _checksum(request)
        result = await vault(request).uploads.append(
            context(request), _upload_id(request), offset, _until_gone(request),
            declared=_body_length(request), checksum=checksum)
    except FhirVaultError as exc:
        return _failed(request, exc)
    headers = {**_base_headers(request), **await _progress_headers(request, result)}
    return Response(status_code=204, headers=headers)


async def delete(request: Request) -> Response:
    """DELETE: the upload and its bytes go (Termination); a finished upload's Binary stays."""
    try:
        _require_tus(request)
        await vault(request).uploads.terminate(context(request), _upload_id(request))
    except FhirVaultError as exc:
        return _failed(request, exc)
    return Response(status_code=204, headers=_base_headers(request))


# -- pieces ---------------------------------------------------------------------------------------
def parse_metadata(header: str) -> dict[str, str]:
    """Upload-Metadata (`key base64value, key2, ...`) as text values; Invalid for a malformed pair,
    a repeated key, or a value that is not base64 of UTF-8 text."""
    values: dict[str, str] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        parts = pair.split()
        if len(parts) > 2 or not parts[0].isascii():
            raise Invalid(f"Upload-Metadata pair '{pair[:80]}' is not 'key base64value'")
        key = parts[0]
        if key in values:
            raise Invalid(f"Upload-Metadata has key '{key}' twice")
        try:
            values[key] = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except (binascii.Error, UnicodeDecodeError):
            raise Invalid(f"The Upload-Metadata value of '{key}' is not base64 of UTF-8 text") from None
    return values


# The tus request headers, each of which must come at most once: two Upload-Length (or Upload-Offset)
# values would leave the server choosing one, so they are refused rather than one silently kept.
SINGLE_HEADERS = ("Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Checksum", "Upload-Metadata",
                  "Upload-Defer-Length", "Upload-Concat")


def _require_tus(request: Request) -> None:
    """Every tus request: `Tus-Resumable: 1.0.0` (PreconditionFailed otherwise) and none of the tus
    headers more than once (Invalid naming it)."""
    for name in SINGLE_HEADERS:
        if len(request.headers.getlist(name)) > 1:
            raise Invalid(f"The header {name} is sent more than once; send it once")
    version = request.headers.get("tus-resumable")
    if version != TUS_VERSION:
        raise PreconditionFailed(f"This endpoint speaks tus {TUS_VERSION}: send 'Tus-Resumable: {TUS_VERSION}'"
                                 + (f" (got '{version[:40]}')" if version else ""))


def _require_offset_stream(request: Request) -> None:
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != OFFSET_OCTET_STREAM:
        raise Unsupported(f"Upload bytes must be sent as Content-Type: {OFFSET_OCTET_STREAM}")


def _whole(value: str | None, name: str) -> int:
    number = whole_number(value) if value is not None else None
    if number is None:
        raise Invalid(f"{name} must be given as a non-negative integer")
    return number


def _body_length(request: Request) -> int | None:
    """The body's declared length; None for a chunked body (its length is counted as it arrives)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None if request.headers.get("transfer-encoding") else 0
    return _whole(declared, "Content-Length")


def _checksum(request: Request) -> Checksum | None:
    header = request.headers.get("upload-checksum")
    if header is None:
        return None
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise Invalid("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm = parts[0].lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise Invalid(f"Checksum algorithm '{parts[0][:20]}' is not supported (Tus-Checksum-Algorithm: "
                      + ",".join(CHECKSUM_ALGORITHMS) + ")")
    try:
        digest = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise Invalid("The digest of Upload-Checksum is not base64") from None
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]().digest_size:
        raise Invalid(f"The digest of Upload-Checksum is not a {algorithm} digest")
    return Checksum(algorithm, digest)


async def _until_gone(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks; a client that goes away ends them (what arrived is kept, tus Core)."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        return


async def _progress_headers(request: Request, result: AppendResult) -> dict[str, str]:
    upload = result.upload
    headers = {"Upload-Offset": str(upload.offset), "Upload-Expires": _http_date(upload.expires)}
    headers.update(_binary_headers(request, upload))
    if result.written is not None:
        stored = result.written.stored
        signed = await vault(request).signed_urls.mint(stored.id, stored.version_id)
        headers["Link"] = f'<{signed}>; rel="alternate"'
    return headers


def _binary_headers(request: Request, upload: UploadRow) -> dict[str, str]:
    if upload.binary_id is None:
        return {}
    version_url = f"{context(request).base_url}/Binary/{upload.binary_id}/_history/{upload.binary_version}"
    return {"X-Binary-Id": upload.binary_id, "Content-Location": version_url}


def _http_date(microseconds: int) -> str:
    return formatdate(microseconds / 1_000_000, usegmt=True)
