"""Bearer-token authentication of every API request: sets `request.state.ctx` with the caller."""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirvault.errors import FhirVaultError
from fhirvault.http.health_api import HEALTH_PATHS
from fhirvault.http.negotiation import add_vary
from fhirvault.http.responses import error_response
from fhirvault.security.tokens import InvalidToken, TokenService
from fhirvault.service.context import RequestContext

FHIR_PREFIX = "/fhir/R4"
SMART_CONFIGURATION = "/.well-known/smart-configuration"
# Resumable (tus) uploads, under the FHIR base (http/tus_api.py).
UPLOAD_PATH = "/Binary/$upload"
# `access_token=` as a query parameter (the query string with a leading `&`)
_TOKEN_IN_QUERY = re.compile(rb"&access_token=", re.IGNORECASE)


def is_public(method: str, path: str) -> bool:
    """The paths that need no token: the CapabilityStatement, SMART discovery, the token endpoint, tus
    discovery (OPTIONS), signed storage URLs (which carry their own authority) and the health checks."""
    if path.startswith("/storage/") or path in (SMART_CONFIGURATION, FHIR_PREFIX + SMART_CONFIGURATION):
        return True
    if path == "/oauth2/token" or path in HEALTH_PATHS:
        return True
    if method == "OPTIONS" and path.startswith(FHIR_PREFIX + UPLOAD_PATH):
        return True  # tus discovery and browsers' CORS preflight, which carry no token
    return method in ("GET", "HEAD") and path in (f"{FHIR_PREFIX}/metadata", f"{FHIR_PREFIX}/metadata/")


def vary_on(send: Send, name: str) -> Send:
    """`send` with `name` added to the `Vary` header of the response start (RFC 9110 12.5.5)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            add_vary(headers, name)
        await send(message)

    return sending


class BearerAuthMiddleware:
    """Pure ASGI, so request and response bodies keep streaming untouched. What a token may see depends on
    the token, so every answer on a protected path says `Vary: Authorization`: a browser cache must not
    give one caller's answer to a request made with another token."""

    def __init__(self, app: ASGIApp, tokens: TokenService, base_url: str) -> None:
        self.app = app
        self.tokens = tokens
        self.base_url = base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        send = vary_on(send, "Authorization")
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            if authorization is None and _TOKEN_IN_QUERY.search(b"&" + scope.get("query_string", b"")):
                # Some clients send the token as a query parameter (RFC 6750 2.3), which puts it in logs and
                # browser histories; it was answered as if no token had been sent.
                raise InvalidToken("An access token in the URL (access_token=...) is not accepted: send it in "
                                   "the Authorization header, as 'Authorization: Bearer <access token>'")
            principal = await self.tokens.authenticate(authorization)
        except FhirVaultError as exc:  # a bad token (401), or the database away while checking it (503)
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["ctx"] = RequestContext(self.base_url, principal=principal)
        await self.app(scope, receive, send)
