"""The OAuth2 token endpoint (client credentials) and SMART discovery."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fhirvault.errors import TooLarge
from fhirvault.http.negotiation import charset_is_utf8, media_type
from fhirvault.http.requests import read_body_bounded
from fhirvault.http.state import vault
from fhirvault.security.clients import AuthFailure, Client
from fhirvault.security.scopes import ScopeError, ScopeSet

log = logging.getLogger("fhirvault.oauth")

GRANT_TYPE = "client_credentials"
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
MAX_FORM_BYTES = 16 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error response."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def response(self) -> Response:
        """The RFC 6749 5.2 error response: JSON `error` and `error_description`, never cached."""
        return JSONResponse({"error": self.error, "error_description": self.description}, self.status,
                            {**NO_STORE, **self.headers})


async def _form(request: Request) -> dict[str, str]:
    if media_type(request.headers.get("content-type", "")) != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The token request must be application/x-www-form-urlencoded")
    if not charset_is_utf8(request.headers.get("content-type")):
        raise OAuthError("invalid_request", "The token request must be UTF-8 (charset=utf-8 or none)")
    try:
        raw = await read_body_bounded(request, MAX_FORM_BYTES, "The token request")
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (TooLarge, UnicodeDecodeError):
        raise OAuthError("invalid_request", "The token request body is too large or not UTF-8") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"The parameter '{name}' is given more than once")
        form[name] = value
    return form


def _credentials(request: Request, form: dict[str, str]) -> tuple[str, str, bool]:
    """(client_id, client_secret, used HTTP Basic)."""
    header = request.headers.get("authorization")
    in_form = "client_secret" in form
    if header is not None:
        if in_form:
            raise OAuthError("invalid_request", "Use one client authentication method, not both")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", "Client authentication must be HTTP Basic or form fields", 401,
                             {"WWW-Authenticate": 'Basic realm="fhirvault"'})
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "The Basic credentials are malformed", 401,
                             {"WWW-Authenticate": 'Basic realm="fhirvault"'}) from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise OAuthError("invalid_client", "The Basic credentials are malformed", 401,
                             {"WWW-Authenticate": 'Basic realm="fhirvault"'})
        # RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
        return unquote_plus(client_id), unquote_plus(secret), True
    if not in_form or not form.get("client_id"):
        raise OAuthError("invalid_client", "The client did not authenticate (HTTP Basic or client_id and "
                         "client_secret form fields)", 401, {"WWW-Authenticate": 'Basic realm="fhirvault"'})
    return form["client_id"], form["client_secret"], False


def _granted_scopes(client: Client, requested: str | None) -> ScopeSet:
    if requested is None or not requested.strip():
        return client.scopes
    try:
        wanted = ScopeSet.parse(requested)
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
    for scope in wanted.scopes:
        if not client.scopes.covers(scope):
            raise OAuthError("invalid_scope", f"The scope '{scope.text}' is more than this client is allowed")
    return wanted


async def token(request: Request) -> Response:
    """The token endpoint (RFC 6749 4.4, client credentials; client authentication by HTTP Basic or form
    fields): a bearer token for the requested scopes, at most the client's. Errors are RFC 6749 5.2
    JSON (400/401, 429 when throttled); the secret never appears in an answer or a log."""
    try:
        form = await _form(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is missing; use client_credentials")
        if grant_type != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "Only the client_credentials grant is supported")
        client_id, secret, basic = _credentials(request, form)
        services = vault(request)
        try:
            client = await services.clients.authenticate(client_id, secret)
        except AuthFailure as exc:
            if exc.throttled:
                raise OAuthError("invalid_client", "Too many failed authentications for this client; "
                                 f"retry in {exc.retry_after} seconds", 429,
                                 {"Retry-After": str(exc.retry_after)}) from None
            headers = {"WWW-Authenticate": 'Basic realm="fhirvault"'} if basic else {}
            raise OAuthError("invalid_client", "Client authentication failed", 401, headers) from None
        scopes = _granted_scopes(client, form.get("scope"))
        issued = await services.tokens.issue(client, scopes)
    except OAuthError as exc:
        log.info("token request refused: %s", exc.error)  # never the credentials
        return exc.response()
    body: dict[str, Any] = {"access_token": issued.access_token, "token_type": "Bearer",
                            "expires_in": issued.expires_in, "scope": issued.scope}
    if issued.patient:
        body["patient"] = issued.patient
    return JSONResponse(body, 200, NO_STORE)


async def smart_configuration(request: Request) -> Response:
    """/.well-known/smart-configuration (SMART App Launch 2.0 discovery): token endpoint, grant types, scopes
    and capabilities; needs no token."""
    base = vault(request).settings.public_base_url
    return JSONResponse({
        "issuer": base,
        "token_endpoint": f"{base}/oauth2/token",
        "grant_types_supported": [GRANT_TYPE],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write", "system/*.*",
                             "patient/*.cruds", "patient/*.rs", "patient/*.read", "patient/*.*"],
        "capabilities": ["client-confidential-symmetric", "permission-v1", "permission-v2"],
    }, headers={"Cache-Control": "public, max-age=3600"})
