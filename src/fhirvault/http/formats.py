"""Response format negotiation for the FHIR base: `_format` over `Accept`, 406 for formats not produced, `_pretty`.

R4 http.html "Content Types and encodings": `_format` overrides `Accept`; fhirvault produces FHIR JSON
R4 only (XML and Turtle are answered 406 with an OperationOutcome naming what it produces). Handlers
that answer raw bytes (Binary, Media, `$binary-access-read`) keep their own Accept rule; this layer only
steps in when the answer would be FHIR JSON that the client's Accept does not admit.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirvault import jsoncodec
from fhirvault.http.negotiation import (
    FHIR_JSON_TYPES,
    PRODUCED_FORMATS,
    accepts_fhir_json,
    is_produced_format,
    media_type,
    names_other_fhir_format,
)
from fhirvault.http.responses import FhirJsonResponse, outcome_response

SAFE_METHODS = ("GET", "HEAD")


class FhirFormatMiddleware:
    """ASGI middleware for paths under `prefix`: refuses unproduced formats (406) before any work is
    done, and re-renders FHIR JSON answers indented when `_pretty=true`."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        formats = [v for k, v in query if k == "_format"]
        pretty_values = [v for k, v in query if k == "_pretty"]
        accept = _header(scope, b"accept")
        method = scope["method"]
        refusal = _refusal(formats, pretty_values, accept, method, scope["path"])
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        check_accept = not formats and not accepts_fhir_json(accept)
        pretty = pretty_values == ["true"] and method != "HEAD"
        if not check_accept and not pretty:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _FormattedSend(send, accept if check_accept else None, pretty))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _refusal(formats: list[str], pretty: list[str], accept: str | None, method: str,
             path: str) -> FhirJsonResponse | None:
    """The error answer for a request whose format parameters cannot be honoured, else None."""
    if len(formats) > 1:
        return outcome_response(400, "_format may be given once", "invalid", expression="_format")
    if formats and not is_produced_format(formats[0]):
        return not_acceptable(f"_format={formats[0]} is not a format this server produces")
    if len(pretty) > 1 or (pretty and pretty[0] not in ("true", "false")):
        return outcome_response(400, "_pretty must be true or false", "invalid", expression="_pretty")
    if formats:
        return None
    if names_other_fhir_format(accept) and not accepts_fhir_json(accept):
        return not_acceptable(f"Accept: {accept} asks for a FHIR format this server does not produce")
    # A write is refused before it happens; reads that may answer raw bytes decide once they know.
    if method not in SAFE_METHODS and "/$" not in path and not accepts_fhir_json(accept):
        return not_acceptable(f"Accept: {accept} does not admit the FHIR JSON this answer would be")
    return None


def not_acceptable(message: str) -> FhirJsonResponse:
    """406 with an OperationOutcome that names the formats produced."""
    return outcome_response(406, f"{message}; it produces {PRODUCED_FORMATS}", "not-supported",
                            headers={"Vary": "Accept"})


class _FormattedSend:
    """Wraps `send`: a 2xx FHIR JSON answer the Accept header does not admit becomes 406; with
    `pretty`, a FHIR JSON body is re-rendered with indentation (it is held whole, as it was built).
    Raw content answers (they carry `Accept-Ranges`) pass unchanged."""

    def __init__(self, send: Send, accept: str | None, pretty: bool) -> None:
        self.send = send
        self.accept = accept
        self.pretty = pretty
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.passthrough = False

    async def __call__(self, message: Message) -> None:
        if self.passthrough:
            await self.send(message)
            return
        if message["type"] == "http.response.start":
            sent = {bytes(k).lower(): bytes(v).decode("latin-1") for k, v in message.get("headers", [])}
            # Raw content (a Binary's or Media's own bytes, served with ranges) keeps its own rule even
            # when its stored type is a FHIR JSON type.
            is_fhir = media_type(sent.get(b"content-type")) in FHIR_JSON_TYPES and b"accept-ranges" not in sent
            if is_fhir and self.accept is not None and 200 <= message["status"] < 300:
                refusal = not_acceptable(f"Accept: {self.accept} does not admit the FHIR JSON this answer is")
                await self.send({"type": "http.response.start", "status": refusal.status_code,
                                 "headers": refusal.raw_headers})
                await self.send({"type": "http.response.body", "body": refusal.body})
                self.start = {}  # swallow the rest of the original answer
                return
            if not (is_fhir and self.pretty):
                self.passthrough = True
                await self.send(message)
                return
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        if not self.start:
            return  # the original answer after a 406 was sent in its place
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self.chunks)
        if body:
            body = jsoncodec.dumps(jsoncodec.loads_exact(body), indent=True)
        headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})
