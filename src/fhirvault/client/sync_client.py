"""FhirClient: the synchronous client, running the shared operations on an `httpx.Client`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx

from fhirvault.client import operations as ops
from fhirvault.client.auth import TokenSource, token_source
from fhirvault.client.direct_upload import DirectSource, create_binary_direct
from fhirvault.client.errors import FhirError, error_for, simple_outcome
from fhirvault.client.exchange import (
    MAX_REDIRECTS,
    Call,
    Operation,
    Reply,
    carries_token,
    json_content,
    parse_body,
    redirect_target,
    request_headers,
)
from fhirvault.client.operations import Resource, SearchParams
from fhirvault.client.resumable import resumable_upload_sync
from fhirvault.client.transfer import Destination, ProgressCallback, UploadBody, UploadData

T = TypeVar("T")


class FhirClient:
    """A synchronous FHIR R4 client for fhirvault or any standards-following server.

    `base_url` is the FHIR base (e.g. `http://127.0.0.1:8000/fhir/R4`). Authentication: a fixed
    bearer `token`; or `client_id` + `client_secret` (OAuth2 client credentials, the token fetched on
    first use and renewed before it expires; `token_url` is discovered from
    `{base_url}/.well-known/smart-configuration` when not given); or `credentials`, any TokenSource;
    or nothing. Thread-safe. Use it as a context manager, or call `close()`.
    """

    def __init__(self, base_url: str, *, client_id: str | None = None, client_secret: str | None = None,
                 token: str | None = None, token_url: str | None = None, scope: str | None = None,
                 credentials: TokenSource | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials or token_source(client_id, client_secret, token, token_url, scope)
        self._token_lock = threading.Lock()
        # No read timeout would hang forever on a dead server; a long one lets slow storage stream.
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Closes the HTTP connections; the client is unusable afterwards."""
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- resources ---------------------------------------------------------------------------
    def create_resource(self, resource: Resource) -> Resource:
        """POST the resource to its type; returns it as stored (with id and meta)."""
        return self._run(ops.create_resource(self.base_url, resource))

    def read_resource(self, resource_type: str, resource_id: str) -> Resource:
        """The current version of a resource (a Binary comes back as FHIR JSON, bytes in base64 `data`;
        use `download` for its raw bytes)."""
        return self._run(ops.read_resource(self.base_url, resource_type, resource_id))

    def vread(self, resource_type: str, resource_id: str, version_id: str | int) -> Resource:
        """One version of a resource."""
        return self._run(ops.vread(self.base_url, resource_type, resource_id, version_id))

    def update_resource(self, resource: Resource, if_match: str | int | None = None) -> Resource:
        """PUT the resource at its id. `if_match` (a version id like `3` or an ETag like `W/"3"`) makes
        the update conditional: a newer version on the server raises PreconditionFailedError."""
        return self._run(ops.update_resource(self.base_url, resource, if_match))

    def delete_resource(self, resource_type: str, resource_id: str) -> None:
        """Delete a resource (its history stays readable)."""
        self._run(ops.delete_resource(self.base_url, resource_type, resource_id))

    def search(self, resource_type: str | None, params: SearchParams = None,
               on_outcome: Callable[[Resource], None] | None = None) -> Iterator[Resource]:
        """Every matching resource, page after page through the Bundle's `next` links. `params` is a
        dict (a list value repeats the parameter) or a list of (name, value) pairs. `on_outcome` is
        called with each OperationOutcome the server adds to a page (such as ignored parameters).
        Lazy: the first request is made when iteration starts."""
        call: Call | None = ops.search_call(self.base_url, resource_type, params)
        while call is not None:
            page = self._run(ops.fetch_page(call))
            if on_outcome is not None:
                for outcome in ops.outcomes(page):
                    on_outcome(outcome)
            yield from ops.matches(page)
            call = ops.next_page(page)

    def history(self, resource_type: str | None = None, resource_id: str | None = None,
                params: SearchParams = None) -> Iterator[Resource]:
        """The history Bundle entries (newest first, deletions included as entries without a resource)
        of one resource, a type, or the whole server, through all pages."""
        call: Call | None = ops.history_call(self.base_url, resource_type, resource_id, params)
        while call is not None:
            page = self._run(ops.fetch_page(call))
            yield from ops.entries(page)
            call = ops.next_page(page)

    def transaction(self, bundle: Resource) -> Resource:
        """POST a transaction (or batch) Bundle; returns the response Bundle."""
        return self._run(ops.transaction(self.base_url, bundle))

    # -- binaries ----------------------------------------------------------------------------
    def create_binary(self, data: UploadData, *, content_type: str | None = None, filename: str | None = None,
                      security_context: str | None = None, on_progress: ProgressCallback | None = None,
                      resumable: bool = False, state_dir: Path | None = None,
                      chunk_size: int | None = None) -> Resource:
        """Upload bytes as a Binary and return the Binary resource (without `data`).

        `data` is bytes; a str (sent as its UTF-8 bytes — base64 text is NOT decoded: decode it
        first with `base64.b64decode` or you will store the base64 characters themselves); a
        `pathlib.Path`; a binary file object; or an iterator of bytes. It is streamed in chunks,
        never read whole. `content_type` defaults to a guess from `filename` (or the Path's name),
        else `application/octet-stream`. `filename` is kept by the server for downloads.
        `security_context` (e.g. `Patient/123`) becomes Binary.securityContext. `on_progress(sent,
        total)` is called as bytes go out (`total` is None when the length is unknown).

        `resumable=True` (`data` must then be a Path) uploads with tus to `Binary/$upload`: an upload
        that breaks off (here, or in an earlier process) goes on from the server's offset, and
        `on_progress` starts there. Its state is kept in `state_dir` (default
        `~/.cache/fhirvault/uploads`); `chunk_size` bytes go per request (None: all in one)."""
        if resumable:
            return resumable_upload_sync(self, data, content_type=content_type, filename=filename,
                                         security_context=security_context, on_progress=on_progress,
                                         state_dir=state_dir, chunk_size=chunk_size)
        body = self._body(data, on_progress)
        return self._run(ops.create_binary(self.base_url, body, content_type=content_type, filename=filename,
                                           security_context=security_context))

    def create_binary_direct(self, data: Path | bytes | DirectSource, *, content_type: str | None = None,
                             filename: str | None = None, security_context: str | None = None,
                             on_progress: ProgressCallback | None = None) -> Resource:
        """Upload a file (`pathlib.Path`) or bytes straight to the server's object store, where the server
        offers it (fhirvault in s3 mode: `Binary/$upload-url`, found in its CapabilityStatement), and return
        the Binary it created, as `create_binary` does. The file is read once for its SHA-256 first (the
        store checks it), then PUT to presigned URLs (in parts when large); the bytes never pass through
        the FHIR server. Raises DirectUploadNotOffered, before sending anything, when the server does not
        offer direct uploads."""
        source = data if isinstance(data, DirectSource) else DirectSource(data)
        return self._run(create_binary_direct(self.base_url, source, content_type=content_type, filename=filename,
                                              security_context=security_context, on_progress=on_progress))

    def create_attachment(self, data: UploadData, *, content_type: str | None = None, filename: str | None = None,
                          security_context: str | None = None, on_progress: ProgressCallback | None = None) -> Resource:
        """Upload like `create_binary` and return an Attachment (`contentType`, `url` = `Binary/{id}`,
        `title`, `size`, `hash`) ready for Patient.photo, Communication.payload.contentAttachment, ..."""
        body = self._body(data, on_progress)
        return self._run(ops.create_attachment(self.base_url, body, content_type=content_type, filename=filename,
                                               security_context=security_context))

    def create_media(self, data: UploadData, *, content_type: str | None = None, filename: str | None = None,
                     security_context: str | None = None, on_progress: ProgressCallback | None = None,
                     media: Resource | None = None) -> Resource:
        """Upload the bytes and create a Media whose `content` is their Attachment; `media` gives
        further elements (subject, ...)."""
        body = self._body(data, on_progress)
        return self._run(ops.create_media(self.base_url, body, content_type=content_type, filename=filename,
                                          security_context=security_context, media=media))

    def create_document_reference(self, data: UploadData, *, content_type: str | None = None,
                                  filename: str | None = None, security_context: str | None = None,
                                  on_progress: ProgressCallback | None = None,
                                  document: Resource | None = None) -> Resource:
        """Upload the bytes and create a DocumentReference with them as `content[0].attachment`;
        `document` gives further elements (subject, type, ...)."""
        body = self._body(data, on_progress)
        return self._run(ops.create_document_reference(self.base_url, body, content_type=content_type,
                                                       filename=filename, security_context=security_context,
                                                       document=document))

    def download(self, target: Resource | str, dest: Destination = None, *,
                 byte_range: tuple[int, int | None] | None = None,
                 on_progress: ProgressCallback | None = None) -> bytes | None:
        """Fetch bytes. `target`: an Attachment dict (its `url`, or inline `data`), a Binary resource,
        a signed URL, or a reference like `Binary/123`. `dest`: a path (written under a temporary
        name, renamed when complete) or a binary file object; None returns the bytes.
        `byte_range=(start, stop)` fetches bytes [start, stop) (stop None: to the end). An Attachment's
        `size` and `hash` are checked on full downloads (IntegrityError on mismatch). The bearer token
        goes only to URLs under the FHIR base — never to signed storage URLs or other hosts."""
        return self._run(ops.download(self.base_url, target, dest, byte_range=byte_range, on_progress=on_progress))

    def binary_access_write(self, reference: str, path: str | None, data: UploadData, content_type: str, *,
                            on_progress: ProgressCallback | None = None) -> Resource:
        """`$binary-access-write`: stream bytes into the Attachment at `path` (e.g.
        `DocumentReference.content[0].attachment`) of `reference`; returns the updated resource."""
        body = self._body(data, on_progress)
        return self._run(ops.binary_access_write(self.base_url, reference, path, body, content_type))

    def binary_access_read(self, reference: str, path: str | None = None, dest: Destination = None, *,
                           on_progress: ProgressCallback | None = None) -> bytes | None:
        """`$binary-access-read`: the bytes of the Attachment at `path` of `reference`, to `dest` as
        for `download` (None returns the bytes)."""
        return self._run(ops.binary_access_read(self.base_url, reference, path, dest, on_progress=on_progress))

    # -- the driver ---------------------------------------------------------------------------
    @staticmethod
    def _body(data: UploadData, on_progress: ProgressCallback | None) -> UploadBody:
        body = data if isinstance(data, UploadBody) else UploadBody(data, on_progress)
        if body.is_async:
            raise TypeError("FhirClient cannot upload an async iterator; use AsyncFhirClient")
        return body

    def _run(self, op: Operation[T]) -> T:
        try:
            call = next(op)
            while True:
                call = op.send(self._exchange(call))
        except StopIteration as done:
            result: T = done.value
            return result

    def _token(self) -> str | None:
        if self.credentials is None:
            return None
        with self._token_lock:
            return self.credentials.current() or self._run(self.credentials.fetch(self.base_url))

    def _exchange(self, call: Call) -> Reply:
        url = call.full_url()
        may_renew = True
        for _ in range(MAX_REDIRECTS + 2):
            token = self._token() if carries_token(self.base_url, call, url) else None
            content: Iterable[bytes] | bytes | None = call.upload.chunks() \
                if call.upload is not None else json_content(call)
            with self._http.stream(call.method, url, headers=request_headers(call, token),
                                   data=call.form, content=content,
                                   timeout=call.timeout or httpx.USE_CLIENT_DEFAULT) as resp:
                next_url = redirect_target(call, resp.status_code, resp.headers, url)
                if next_url is not None:
                    url = next_url
                    continue
                if resp.status_code == 401 and token and call.replayable and may_renew:
                    may_renew = False
                    assert self.credentials is not None
                    if self.credentials.invalidate():
                        continue
                if not resp.is_success:
                    resp.read()
                    raise error_for(resp.status_code, resp.content, resp.headers.get("content-type", ""))
                if call.download is None:
                    resp.read()
                    return Reply(resp.status_code, resp.headers, parse_body(resp.content))
                try:
                    call.download.begin(resp.status_code, resp.headers)
                    for chunk in resp.iter_bytes():
                        call.download.write(chunk)
                except BaseException:
                    call.download.abort()
                    raise
                return Reply(resp.status_code, resp.headers, None)
        raise FhirError(0, simple_outcome(f"too many redirects from {call.url}"))


