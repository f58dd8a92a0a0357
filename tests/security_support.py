"""Helpers of the security tests: clients with given scopes, and forged or tampered tokens."""

from __future__ import annotations

import base64
import json
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey

from tests.support.server import ServerProcess


def b64url_json(part: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return data


def token_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")
    return b64url_json(head), b64url_json(payload)


def client_token(server: ServerProcess, name: str, scope: str, patient: str | None = None) -> str:
    created = server.create_client(name, scope, patient)
    return server.token(created["client_id"], created["client_secret"])


def foreign_signed(token: str) -> str:
    """The same header (kid included) and claims, signed by a key this server never had."""
    header, claims = token_parts(token)
    key = ECKey.generate_key("P-256", private=True)
    return jwt.encode(header, claims, key, algorithms=["ES256"])


def tampered(token: str) -> str:
    """The server's own signature on a payload changed to grant more."""
    head, payload, sig = token.split(".")
    claims = b64url_json(payload)
    claims["scope"] = "system/*.cruds"
    raw = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{head}.{raw}.{sig}"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}
