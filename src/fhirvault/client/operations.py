"""Every FHIR interaction of the client, written once as an operation (see exchange.py): which
requests to make and what to make of the replies, for any standards-following FHIR R4 server."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fhirvault.client.errors import FhirError, InvalidError, simple_outcome
from fhirvault.client.exchange import FHIR_JSON, Call, Operation
from fhirvault.client.transfer import Destination, DownloadSink, ProgressCallback, UploadBody, guess_content_type

Resource = dict[str, Any]
SearchParams = Mapping[str, Any] | Sequence[tuple[str, Any]] | None

JSON_HEADERS = {"Accept": FHIR_JSON}
FHIR_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")
WRITE_HEADERS = {"Accept": FHIR_JSON, "Prefer": "return=representation"}


def _body(reply_body: Any, what: str) -> Resource:
    if not isinstance(reply_body, dict):
        raise FhirError(0, simple_outcome(f"the server answered {what} without a FHIR JSON body"))
    return reply_body


def _type_and_id(resource: Resource) -> tuple[str, str | None]:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise ValueError("the resource has no resourceType")
    rid = resource.get("id")
    return rtype, rid if isinstance(rid, str) else None


def etag_for(version: str | int) -> str:
    """`If-Match` value for a version id: `3`, `"3"`, `W/"3"` all give `W/"3"`."""
    text = str(version)
    if text.startswith('W/"') or text.startswith('"'):
        return text if text.startswith("W/") else f"W/{text}"
    return f'W/"{text}"'


# -- resources ---------------------------------------------------------------------------------
def create_resource(base: str, resource: Resource) -> Operation[Resource]:
    """POST [base]/[type] (R4 3.1.0.7 create) asking for the stored representation; returns the created
    resource with its id and meta. The server's refusal arrives as a FhirError subclass from the
    runner."""
    rtype, _ = _type_and_id(resource)
    reply = yield Call("POST", f"{base}/{rtype}", json=resource, headers=dict(WRITE_HEADERS))
    return _body(reply.body, "the create")


def read_resource(base: str, rtype: str, rid: str) -> Operation[Resource]:
    """GET [base]/[type]/[id] (R4 read); returns the resource."""
    reply = yield Call("GET", f"{base}/{rtype}/{rid}", headers=dict(JSON_HEADERS))
    return _body(reply.body, "the read")


def vread(base: str, rtype: str, rid: str, version_id: str | int) -> Operation[Resource]:
    """GET [base]/[type]/[id]/_history/[vid] (R4 vread); returns that version."""
    reply = yield Call("GET", f"{base}/{rtype}/{rid}/_history/{version_id}", headers=dict(JSON_HEADERS))
    return _body(reply.body, "the vread")


def update_resource(base: str, resource: Resource, if_match: str | int | None = None) -> Operation[Resource]:
    """PUT [base]/[type]/[id] (R4 update), with `If-Match` for the given version when `if_match` is set (a 412
    then means someone else changed it); returns the stored version. ValueError when the resource has
    no id."""
    rtype, rid = _type_and_id(resource)
    if rid is None:
        raise ValueError("update_resource needs a resource with an id")
    headers = dict(WRITE_HEADERS)
    if if_match is not None:
        headers["If-Match"] = etag_for(if_match)
    reply = yield Call("PUT", f"{base}/{rtype}/{rid}", json=resource, headers=headers)
    return _body(reply.body, "the update")


def delete_resource(base: str, rtype: str, rid: str) -> Operation[None]:
    """DELETE [base]/[type]/[id] (R4 delete)."""
    yield Call("DELETE", f"{base}/{rtype}/{rid}", headers=dict(JSON_HEADERS))
    return None


def transaction(base: str, bundle: Resource) -> Operation[Resource]:
    """POST [base] with a batch or transaction Bundle (R4 3.1.0.11); returns the response Bundle. ValueError
    when `bundle` is not a Bundle."""
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("transaction needs a Bundle")
    reply = yield Call("POST", base, json=bundle, headers=dict(JSON_HEADERS))
    return _body(reply.body, "the transaction")


# -- search and history: one page per operation, followed through `next` links -------------------
def search_params(params: SearchParams) -> list[tuple[str, str]]:
    """Search parameters as pairs; a list value repeats the parameter (AND), as FHIR reads it."""
    if params is None:
        return []
    items = params.items() if isinstance(params, Mapping) else params
    pairs: list[tuple[str, str]] = []
    for key, value in items:
        values = value if isinstance(value, list | tuple) else [value]
        pairs.extend((str(key), str(v)) for v in values)
    return pairs


def search_call(base: str, rtype: str | None, params: SearchParams) -> Call:
    """The GET of the first page of a search of `rtype` (None: the whole system) with `params`."""
    url = f"{base}/{rtype}" if rtype else base
    return Call("GET", url, params=search_params(params), headers=dict(JSON_HEADERS))


def history_call(base: str, rtype: str | None, rid: str | None, params: SearchParams) -> Call:
    """The GET of the first page of a history: of the system, of a type (`rtype`), or of one resource (`rtype`
    and `rid`)."""
    parts = [base] + ([rtype] if rtype else []) + ([rid] if rtype and rid else []) + ["_history"]
    return Call("GET", "/".join(parts), params=search_params(params), headers=dict(JSON_HEADERS))


def fetch_page(call: Call) -> Operation[Resource]:
    """Fetches one searchset or history page; returns the Bundle."""
    reply = yield call
    return _body(reply.body, "the search")


def next_page(bundle: Resource) -> Call | None:
    """The GET of the page a Bundle's `next` link names, or None on the last page."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
            return Call("GET", str(link["url"]), headers=dict(JSON_HEADERS))
    return None


def matches(bundle: Resource) -> Iterator[Resource]:
    """The matched resources of a searchset page (included resources and outcomes left out)."""
    for entry in bundle.get("entry") or []:
        mode = (entry.get("search") or {}).get("mode", "match")
        if mode == "match" and isinstance(entry.get("resource"), dict):
            yield entry["resource"]


def outcomes(bundle: Resource) -> Iterator[Resource]:
    """The OperationOutcomes a searchset page carries (search.mode outcome), e.g. ignored parameters."""
    for entry in bundle.get("entry") or []:
        if (entry.get("search") or {}).get("mode") == "outcome" and isinstance(entry.get("resource"), dict):
            yield entry["resource"]


def entries(bundle: Resource) -> Iterator[Resource]:
    """Every entry of a Bundle, as the entry dicts (with fullUrl, search, request, response as present)."""
    yield from bundle.get("entry") or []


# -- binaries ---------------------------------------------------------------------------------
def create_binary(base: str, body: UploadBody, *, content_type: str | None = None, filename: str | None = None,
                  security_context: str | None = None) -> Operation[Resource]:
    """POST [base]/Binary with the raw bytes of `body` streamed as the request body (Content-Type: the given
    type or one guessed from the file name; the file name as `_filename`; the securityContext as
    `X-Security-Context`); returns the created Binary (without data), rebuilt from Location when the
    server sends no body."""
    filename = filename or body.name
    content_type = content_type or guess_content_type(filename)
    headers = {"Content-Type": content_type, "Accept": FHIR_JSON}
    if security_context:
        headers["X-Security-Context"] = security_context
    params = [("_filename", filename)] if filename else []
    reply = yield Call("POST", f"{base}/Binary", params=params, headers=headers, upload=body)
    if isinstance(reply.body, dict) and reply.body.get("resourceType") == "Binary":
        return reply.body
    # A server answering without a body (or with an OperationOutcome) still says where the Binary is.
    location = reply.headers.get("location") or reply.headers.get("content-location") or ""
    parts = location.split("/Binary/", 1)
    if len(parts) != 2 or not parts[1]:
        raise FhirError(reply.status, simple_outcome("the server created the Binary but did not say its id"))
    rid, _, rest = parts[1].partition("/")
    binary: Resource = {"resourceType": "Binary", "id": rid, "contentType": content_type}
    version = rest.rpartition("/")[2] if rest.startswith("_history/") else None
    if version:
        binary["meta"] = {"versionId": version}
    if security_context:
        binary["securityContext"] = {"reference": security_context}
    return binary


def attachment_for(binary: Resource, body: UploadBody, filename: str | None) -> Resource:
    """The Attachment pointing at an uploaded Binary; size and hash are those of the bytes sent."""
    attachment: Resource = {"contentType": binary.get("contentType") or "application/octet-stream",
                            "url": f"Binary/{binary['id']}"}
    title = filename or body.name
    if title:
        attachment["title"] = title
    attachment["size"] = body.sent
    attachment["hash"] = body.sha1_b64
    return attachment


def create_attachment(base: str, body: UploadBody, *, content_type: str | None = None, filename: str | None = None,
                      security_context: str | None = None) -> Operation[Resource]:
    """Uploads the bytes as a Binary and returns an Attachment pointing at it (`url` Binary/id, contentType,
    title, size and SHA-1 hash of the bytes sent)."""
    binary = yield from create_binary(base, body, content_type=content_type, filename=filename,
                                      security_context=security_context)
    return attachment_for(binary, body, filename)


def create_media(base: str, body: UploadBody, *, content_type: str | None = None, filename: str | None = None,
                 security_context: str | None = None, media: Resource | None = None) -> Operation[Resource]:
    """Uploads the bytes as a Binary and creates a Media (status completed, plus the fields of `media`) whose
    content is that Attachment; returns the created Media."""
    attachment = yield from create_attachment(base, body, content_type=content_type, filename=filename,
                                              security_context=security_context)
    resource: Resource = {"resourceType": "Media", "status": "completed", **(media or {}), "content": attachment}
    return (yield from create_resource(base, resource))


def create_document_reference(base: str, body: UploadBody, *, content_type: str | None = None,
                              filename: str | None = None, security_context: str | None = None,
                              document: Resource | None = None) -> Operation[Resource]:
    """Uploads the bytes as a Binary and creates a DocumentReference (status current, plus the fields of
    `document`) with that Attachment as its one content; returns the created DocumentReference."""
    attachment = yield from create_attachment(base, body, content_type=content_type, filename=filename,
                                              security_context=security_context)
    resource: Resource = {"resourceType": "DocumentReference", "status": "current", **(document or {}),
                          "content": [{"attachment": attachment}]}
    return (yield from create_resource(base, resource))


# -- downloads ---------------------------------------------------------------------------------
def _range_header(byte_range: tuple[int, int | None]) -> str:
    start, stop = byte_range
    if start < 0 or (stop is not None and stop <= start):
        raise ValueError("byte_range is (start, stop) with 0 <= start < stop, or (start, None)")
    return f"bytes={start}-" if stop is None else f"bytes={start}-{stop - 1}"


def resolve_url(base: str, url: str) -> str:
    """An absolute URL for an Attachment url: absolute stays, `Binary/1` is under the FHIR base."""
    if url.startswith(("http://", "https://")):
        return url
    if url.startswith("/") or "://" in url:
        raise ValueError(f"cannot download from {url!r}: give an absolute http(s) URL or a reference like Binary/1")
    return f"{base}/{url}"


def download(base: str, target: Resource | str, dest: Destination = None, *,
             byte_range: tuple[int, int | None] | None = None,
             on_progress: ProgressCallback | None = None) -> Operation[bytes | None]:
    """Downloads the bytes of a Binary, an Attachment (by url, or its inline data), or a URL, into `dest`
    (None: returned as bytes), streaming, optionally one `byte_range` (start, stop exclusive). Size and
    hash given by an Attachment are checked; a mismatch raises an error. Returns the bytes or None when
    written to `dest`."""
    size: int | None = None
    sha1: str | None = None
    accept = "*/*"
    if isinstance(target, dict):
        if target.get("resourceType") == "Binary" and target.get("id"):
            url = f"Binary/{target['id']}"
        else:
            url = target.get("url") or ""
            size = target.get("size") if isinstance(target.get("size"), int) else None
            sha1 = target.get("hash") if isinstance(target.get("hash"), str) else None
        content_type = target.get("contentType")
        if isinstance(content_type, str) and content_type.split(";")[0].strip().lower() not in FHIR_JSON_TYPES:
            # On a Binary read an Accept equal to the content type asks for the raw bytes; but a FHIR JSON
            # type in Accept asks for the Binary resource (R4), so stored FHIR JSON is fetched with */*.
            accept = content_type
        if not url and isinstance(target.get("data"), str):
            return _inline(target["data"], dest, size, sha1, byte_range, on_progress)
        if not url:
            raise ValueError("the Attachment has neither url nor data")
    else:
        url = target
    sink = DownloadSink(dest, expected_size=size, expected_sha1_b64=sha1, byte_range=byte_range,
                        on_progress=on_progress)
    headers = {"Accept": accept}
    if byte_range is not None:
        headers["Range"] = _range_header(byte_range)
    yield Call("GET", resolve_url(base, url), headers=headers, download=sink)
    return sink.finish()


def _inline(data: str, dest: Destination, size: int | None, sha1: str | None,
            byte_range: tuple[int, int | None] | None, on_progress: ProgressCallback | None) -> bytes | None:
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise InvalidError(0, simple_outcome(f"the Attachment's data is not valid base64: {exc}")) from None
    sink = DownloadSink(dest, expected_size=size, expected_sha1_b64=sha1, byte_range=byte_range,
                        on_progress=on_progress)
    sink.begin(200, {"content-length": str(len(raw))})
    sink.write(raw)
    return sink.finish()


# -- HAPI-style $binary-access operations ---------------------------------------------------------
def binary_access_write(base: str, reference: str, path: str | None, body: UploadBody,
                        content_type: str) -> Operation[Resource]:
    """POST [reference]/$binary-access-write (HAPI FHIR) with the raw bytes of `body` for the Attachment at
    element `path`; returns the updated resource."""
    params = [("path", path)] if path else []
    headers = {"Content-Type": content_type, "Accept": FHIR_JSON}
    reply = yield Call("POST", f"{base}/{reference.strip('/')}/$binary-access-write", params=params,
                       headers=headers, upload=body)
    return _body(reply.body, "$binary-access-write")


def binary_access_read(base: str, reference: str, path: str | None, dest: Destination = None, *,
                       on_progress: ProgressCallback | None = None) -> Operation[bytes | None]:
    """GET [reference]/$binary-access-read (HAPI FHIR): the raw bytes of the Attachment at element `path`,
    streamed into `dest` (None: returned as bytes)."""
    params = [("path", path)] if path else []
    sink = DownloadSink(dest, on_progress=on_progress)
    yield Call("GET", f"{base}/{reference.strip('/')}/$binary-access-read", params=params,
               headers={"Accept": "*/*"}, download=sink)
    return sink.finish()

