"""Where the client's bearer token comes from: a fixed token, or OAuth2 client credentials fetched
(token URL discovered through SMART configuration when not given) and refreshed before expiry."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

from fhirvault.client.errors import FhirError, simple_outcome
from fhirvault.client.exchange import Call, Operation


class TokenSource(Protocol):
    """Something that hands out bearer tokens; `fetch` is an operation so both clients can run it."""

    def current(self) -> str | None:
        """A token still good to use, or None when `fetch` must run first."""

    def fetch(self, fhir_base: str) -> Operation[str]:
        """Obtain a fresh token."""

    def invalidate(self) -> bool:
        """Forget the current token (the server refused it); True when `fetch` can get another."""


class FixedToken:
    """A token given by the caller, used as is and never refreshed."""

    def __init__(self, token: str) -> None:
        self._token = token

    def current(self) -> str | None:
        """The given token."""
        return self._token

    def fetch(self, fhir_base: str) -> Operation[str]:
        """The given token, without any request."""
        return self._token
        yield  # pragma: no cover - makes this a generator

    def invalidate(self) -> bool:
        """False: a fixed token cannot be replaced, so a 401 is final."""
        return False


class ClientCredentials:
    """OAuth2 client credentials grant (RFC 6749 §4.4) with `client_secret_basic` authentication.
    A token is renewed a little before it expires (a tenth of its lifetime, at most 30 s early),
    so a request never leaves with a token about to lapse."""

    def __init__(self, client_id: str, client_secret: str, token_url: str | None = None, *,
                 scope: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self.token_url = token_url
        self.scope = scope
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetch_count = 0

    def current(self) -> str | None:
        """The cached token while it is not due for renewal, else None."""
        if self._token is not None and self._clock() < self._renew_at:
            return self._token
        return None

    def invalidate(self) -> bool:
        """Forgets the cached token (the server refused it); True, since `fetch` can get another."""
        self._token = None
        return True

    def fetch(self, fhir_base: str) -> Operation[str]:
        """Gets a new token from the token endpoint (discovered from .well-known/smart-configuration when no
        token_url was given) by the client credentials grant, caches it until shortly before it
        expires and returns it. Raises FhirError when discovery or the grant fails."""
        if self.token_url is None:
            reply = yield Call("GET", f"{fhir_base}/.well-known/smart-configuration", authenticated=False)
            endpoint = reply.body.get("token_endpoint") if isinstance(reply.body, dict) else None
            if not isinstance(endpoint, str) or not endpoint:
                raise FhirError(0, simple_outcome(
                    f"{fhir_base}/.well-known/smart-configuration names no token_endpoint; give token_url"))
            self.token_url = endpoint
        # RFC 6749 §2.3.1: id and secret are form-urlencoded before going into Basic.
        basic = base64.b64encode(f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}".encode())
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        started = self._clock()
        reply = yield Call("POST", self.token_url, form=form, authenticated=False,
                           headers={"Authorization": f"Basic {basic.decode('ascii')}", "Accept": "application/json"})
        body = reply.body if isinstance(reply.body, dict) else {}
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise FhirError(reply.status, simple_outcome("the token endpoint answered without an access_token"))
        lifetime = float(body.get("expires_in") or 3600)
        self._token = token
        self._renew_at = started + lifetime - min(30.0, lifetime / 10)
        self.fetch_count += 1
        return token


def token_source(client_id: str | None, client_secret: str | None, token: str | None,
                 token_url: str | None, scope: str | None) -> TokenSource | None:
    """The token source the constructor arguments describe (None: send no Authorization)."""
    if token and (client_id or client_secret):
        raise ValueError("give either token or client_id/client_secret, not both")
    if token:
        return FixedToken(token)
    if client_id or client_secret:
        if not (client_id and client_secret):
            raise ValueError("client credentials need both client_id and client_secret")
        return ClientCredentials(client_id, client_secret, token_url, scope=scope)
    return None
