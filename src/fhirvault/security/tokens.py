"""Access tokens: RFC 9068 JWTs signed with the database's newest key, and their verification."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError

from fhirvault.errors import Unauthorized
from fhirvault.security.clients import Client, ClientStore
from fhirvault.security.keys import ALGORITHM, KeyRing
from fhirvault.security.principal import Principal
from fhirvault.security.scopes import ScopeError, ScopeSet

TOKEN_TYPE = "at+jwt"  # RFC 9068 section 2.1
# Each request checks that the token's client is still enabled. The answer is kept this many seconds
# per process, so a disabled client's tokens stop working on every node within this time, and a
# request does not pay a database round trip for it.
CLIENT_CHECK_SECONDS = 2.0
# Verified tokens are remembered (by the SHA-256 of the token, never the token itself) until they expire,
# so a signature is checked once per token and process rather than once per request.
VERIFIED_CACHE_SIZE = 10_000


class InvalidToken(Unauthorized):
    """The bearer token is missing, malformed, expired, foreign-signed or its client is disabled."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="login")
        self.headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


@dataclass(frozen=True)
class IssuedToken:
    """An access token as the token endpoint returns it: the signed JWT, its lifetime in seconds, the granted
    scopes (space-separated) and the patient id of a patient-context client."""

    access_token: str
    expires_in: int
    scope: str
    patient: str | None


class TokenService:
    """Issues and verifies the server's access tokens: JWTs signed with the newest key of the token key ring,
    checked against every key of the ring, the issuer, the audience and the client's current state.
    `lifetime` is in seconds."""

    def __init__(self, keys: KeyRing, clients: ClientStore, issuer: str, audience: str, lifetime: int) -> None:
        self.keys = keys
        self.clients = clients
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._checked: dict[str, tuple[float, Client | None]] = {}
        self._verified: dict[bytes, tuple[float, dict[str, Any]]] = {}  # sha256(token) -> (exp, claims)

    async def issue(self, client: Client, scopes: ScopeSet) -> IssuedToken:
        """A new access token for `client` with the granted `scopes` (already checked against the client's),
        signed with the current signing key; `patient` carries the launch context (SMART App Launch
        2.0)."""
        key = await self.keys.signing_key()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "sub": client.client_id, "client_id": client.client_id, "aud": self.audience,
            "iat": now, "exp": now + self.lifetime, "jti": secrets.token_hex(16), "scope": scopes.text,
        }
        if client.patient:
            claims["patient"] = client.patient.split("/", 1)[1]
        header = {"alg": ALGORITHM, "kid": key.kid, "typ": TOKEN_TYPE}
        token = jwt.encode(header, claims, key, algorithms=[ALGORITHM])
        return IssuedToken(token, self.lifetime, scopes.text, claims.get("patient"))

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization: Bearer` header; InvalidToken otherwise. Never echoes it."""
        if not authorization:
            raise InvalidToken("This request needs an access token (Authorization: Bearer ...); "
                               "get one from the token endpoint")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InvalidToken("The Authorization header must be 'Bearer <access token>'")
        claims = await self._cached_claims(token)
        client = await self._client(str(claims.get("client_id", "")))
        if client is None or not client.enabled:
            raise InvalidToken("The access token's client is unknown or disabled")
        try:
            scopes = ScopeSet.parse(str(claims.get("scope", "")))
        except ScopeError:
            raise InvalidToken("The access token carries scopes this server does not understand") from None
        # The patient context comes from the client row, never from the token alone.
        return Principal(client.client_id, scopes, client.patient)

    async def _client(self, client_id: str) -> Client | None:
        now = time.monotonic()
        hit = self._checked.get(client_id)
        if hit is not None and now - hit[0] < CLIENT_CHECK_SECONDS:
            return hit[1]
        client = await self.clients.get(client_id)
        if len(self._checked) > 10_000:  # only verified tokens reach here, so this bounds honest growth
            self._checked.clear()
        self._checked[client_id] = (now, client)
        return client

    async def _cached_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token verified before and not yet expired, else those of a fresh verification.
        Only tokens that verified are remembered: a forged one is checked (and refused) every time."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        hit = self._verified.get(digest)
        if hit is not None:
            if time.time() < hit[0]:
                return hit[1]
            del self._verified[digest]
        claims = await self._verified_claims(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            now = time.time()
            self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.clear()
        self._verified[digest] = (float(claims["exp"]), claims)
        return claims

    async def _verified_claims(self, token: str) -> dict[str, Any]:
        try:
            header = _peek_header(token)
            kid = header.get("kid")
            if not isinstance(kid, str) or header.get("alg") != ALGORITHM:
                raise InvalidToken("The access token was not signed by this server")
            key = await self.keys.verification_key(kid)
            if key is None:
                raise InvalidToken("The access token was not signed by this server")
            decoded = jwt.decode(token, key, algorithms=[ALGORITHM])
        except InvalidToken:
            raise
        except (JoseError, ValueError, TypeError, UnicodeDecodeError):
            raise InvalidToken("The access token is malformed or its signature does not verify") from None
        if decoded.header.get("typ") != TOKEN_TYPE:
            raise InvalidToken("The token is not an access token")
        claims = dict(decoded.claims)
        registry = jwt.JWTClaimsRegistry(
            leeway=0,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            client_id={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken("The access token has expired; get a new one") from None
        except JoseError:
            raise InvalidToken("The access token is not meant for this server") from None
        return claims


def _peek_header(token: str) -> dict[str, Any]:
    """The JOSE header, read before verification only to pick the key."""
    head = token.split(".", 1)[0]
    data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    if not isinstance(data, dict):
        raise ValueError("header is not an object")
    return data
