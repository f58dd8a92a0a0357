"""AsyncFhirClient: the asynchronous client, running the shared operations on an `httpx.AsyncClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
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
from fhirvault.client.resumable import resumable_upload_async
from fhirvault.client.transfer import Destination, ProgressCallback, UploadBody, UploadData

T = TypeVar("T")


class AsyncFhirClient:
    """The asynchronous twin of FhirClient: the same constructor and methods, awaited (`search` and
    `history` are async iterators), plus async iterators of bytes as upload data. Use it as an async
    context manager, or call `aclose()`. Writing a download to a path or file object happens in the
    event loop's thread, chunk by chunk."""

    def __init__(self, base_url: str, *, client_id: str | None = None, client_secret: str | None = None,
                 token: str | None = None, token_url: str | None = None, scope: str | None = None,
                 credentials: TokenSource | None = None, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.credentials = credentials or token_source(client_id, client_secret, token, token_url, scope)
        self._token_lock = asyncio.Lock()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    async def aclose(self) -> None:
        """Closes the HTTP connections; the client is unusable afterwards."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFhirClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- resources (see FhirClient for each method's contract) -------------------------------
    async def create_resource(self, resource: Resource) -> Resource:
        """As FhirClient.create_resource: POST the resource, return it as stored."""
        return await self._run(ops.create_resource(self.base_url, resource))

    async def read_resource(self, resource_type: str, resource_id: str) -> Resource:
        """As FhirClient.read_resource: the current version of [type]/[id]."""
        return await self._run(ops.read_resource(self.base_url, resource_type, resource_id))

    async def vread(self, resource_type: str, resource_id: str, version_id: str | int) -> Resource:
        """As FhirClient.vread: one version of [type]/[id]."""
        return await self._run(ops.vread(self.base_url, resource_type, resource_id, version_id))

    async def update_resource(self, resource: Resource, if_match: str | int | None = None) -> Resource:
        """As FhirClient.update_resource: PUT the resource (If-Match with `if_match`), return the stored
        version."""
        return await self._run(ops.update_resource(self.base_url, resource, if_match))

    async def delete_resource(self, resource_type: str, resource_id: str) -> None:
        """As FhirClient.delete_resource: DELETE [type]/[id]."""
        await self._run(ops.delete_resource(self.base_url, resource_type, resource_id))

    async def search(self, resource_type: str | None, params: SearchParams = None) -> AsyncIterator[Resource]:
        """As FhirClient.search: every matching resource, following `next` links page by page."""
        call: Call | None = ops.search_call(self.base_url, resource_type, params)
        while call is not None:
            page = await self._run(ops.fetch_page(call))
            for resource in ops.matches(page):
                yield resource
            call = ops.next_page(page)

    async def history(self, resource_type: str | None = None, resource_id: str | None = None,
                      params: SearchParams = None) -> AsyncIterator[Resource]:
        """As FhirClient.history: every history entry (Bundle entry dicts), page by page."""
        call: Call | None = ops.history_call(self.base_url, resource_type, resource_id, params)
        while call is not None:
            page = await self._run(ops.fetch_page(call))
            for entry in ops.entries(page):
                yield entry
            call = ops.next_page(page)

    async def transaction(self, bundle: Resource) -> Resource:
        """As FhirClient.transaction: POST a batch or transaction Bundle, return the response Bundle."""
        return await self._run(ops.transaction(self.base_url, bundle))

    # -- binaries ----------------------------------------------------------------------------
    async def create_binary(self, data: UploadData, *, content_type: str | None = None,
                            filename: str | None = None, security_context: str | None = None,
                            on_progress: ProgressCallback | None = None, resumable: bool = False,
                            state_dir: Path | None = None, chunk_size: int | None = None) -> Resource:
        """As FhirClient.create_binary (a str is sent as UTF-8: decode base64 text first); `data`
        may also be an async iterator of bytes. `resumable=True`: a tus upload of a Path that resumes
        where an earlier attempt stopped, as in FhirClient.create_binary."""
        if resumable:
            return await resumable_upload_async(self, data, content_type=content_type, filename=filename,
                                                security_context=security_context, on_progress=on_progress,
                                                state_dir=state_dir, chunk_size=chunk_size)
        return await self._run(ops.create_binary(self.base_url, _body(data, on_progress),
                                                 content_type=content_type, filename=filename,
                                                 security_context=security_context))

    async def create_binary_direct(self, data: Path | bytes | DirectSource, *, content_type: str | None = None,
                                   filename: str | None = None, security_context: str | None = None,
                                   on_progress: ProgressCallback | None = None) -> Resource:
        """As FhirClient.create_binary_direct; hashing a file before the upload runs in a worker thread."""
        source = data if isinstance(data, DirectSource) else await asyncio.to_thread(DirectSource, data)
        return await self._run(create_binary_direct(self.base_url, source, content_type=content_type,
                                                    filename=filename, security_context=security_context,
                                                    on_progress=on_progress))

    async def create_attachment(self, data: UploadData, *, content_type: str | None = None,
                                filename: str | None = None, security_context: str | None = None,
                                on_progress: ProgressCallback | None = None) -> Resource:
        """As FhirClient.create_attachment: upload as a Binary, return an Attachment pointing at it."""
        return await self._run(ops.create_attachment(self.base_url, _body(data, on_progress),
                                                     content_type=content_type, filename=filename,
                                                     security_context=security_context))

    async def create_media(self, data: UploadData, *, content_type: str | None = None, filename: str | None = None,
                           security_context: str | None = None, on_progress: ProgressCallback | None = None,
                           media: Resource | None = None) -> Resource:
        """As FhirClient.create_media: upload as a Binary and create a Media holding it."""
        return await self._run(ops.create_media(self.base_url, _body(data, on_progress),
                                                content_type=content_type, filename=filename,
                                                security_context=security_context, media=media))

    async def create_document_reference(self, data: UploadData, *, content_type: str | None = None,
                                        filename: str | None = None, security_context: str | None = None,
                                        on_progress: ProgressCallback | None = None,
                                        document: Resource | None = None) -> Resource:
        """As FhirClient.create_document_reference: upload as a Binary and create a DocumentReference holding
        it."""
        return await self._run(ops.create_document_reference(self.base_url, _body(data, on_progress),
                                                             content_type=content_type, filename=filename,
                                                             security_context=security_context,
                                                             document=document))

    async def download(self, target: Resource | str, dest: Destination = None, *,
                       byte_range: tuple[int, int | None] | None = None,
                       on_progress: ProgressCallback | None = None) -> bytes | None:
        """As FhirClient.download: stream a Binary's, an Attachment's or a URL's bytes into `dest` or memory."""
        return await self._run(ops.download(self.base_url, target, dest, byte_range=byte_range,
                                            on_progress=on_progress))

    async def binary_access_write(self, reference: str, path: str | None, data: UploadData, content_type: str, *,
                                  on_progress: ProgressCallback | None = None) -> Resource:
        """As FhirClient.binary_access_write: $binary-access-write the bytes into the Attachment at `path`."""
        return await self._run(ops.binary_access_write(self.base_url, reference, path,
                                                       _body(data, on_progress), content_type))

    async def binary_access_read(self, reference: str, path: str | None = None, dest: Destination = None, *,
                                 on_progress: ProgressCallback | None = None) -> bytes | None:
        """As FhirClient.binary_access_read: $binary-access-read the bytes of the Attachment at `path`."""
        return await self._run(ops.binary_access_read(self.base_url, reference, path, dest,
                                                      on_progress=on_progress))

    # -- the driver (the same steps as FhirClient's, awaited) ----------------------------------
    async def _run(self, op: Operation[T]) -> T:
        try:
            call = next(op)
            while True:
                call = op.send(await self._exchange(call))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _token(self) -> str | None:
        if self.credentials is None:
            return None
        async with self._token_lock:
            return self.credentials.current() or await self._run(self.credentials.fetch(self.base_url))

    async def _exchange(self, call: Call) -> Reply:
        url = call.full_url()
        may_renew = True
        for _ in range(MAX_REDIRECTS + 2):
            token = await self._token() if carries_token(self.base_url, call, url) else None
            content: AsyncIterable[bytes] | bytes | None = call.upload.achunks() \
                if call.upload is not None else json_content(call)
            async with self._http.stream(call.method, url, headers=request_headers(call, token),
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
                    await resp.aread()
                    raise error_for(resp.status_code, resp.content, resp.headers.get("content-type", ""))
                if call.download is None:
                    await resp.aread()
                    return Reply(resp.status_code, resp.headers, parse_body(resp.content))
                try:
                    call.download.begin(resp.status_code, resp.headers)
                    async for chunk in resp.aiter_bytes():
                        call.download.write(chunk)
                except BaseException:
                    call.download.abort()
                    raise
                return Reply(resp.status_code, resp.headers, None)
        raise FhirError(0, simple_outcome(f"too many redirects from {call.url}"))


def _body(data: UploadData, on_progress: ProgressCallback | None) -> UploadBody:
    return data if isinstance(data, UploadBody) else UploadBody(data, on_progress)
