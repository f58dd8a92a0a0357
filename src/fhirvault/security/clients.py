"""OAuth2 clients in the database: creation, listing, disabling, secret rotation, authentication."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.clock import now_us
from fhirvault.errors import Invalid, NotFound
from fhirvault.fhir.references import parse_reference
from fhirvault.security.scopes import ScopeError, ScopeSet
from fhirvault.security.secret_hash import dummy_hash, hash_secret, new_secret, verify_secret
from fhirvault.store.database import Database
from fhirvault.store.security import clients


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    scopes: ScopeSet
    patient: str | None  # "Patient/123" for a patient-context client
    enabled: bool
    created_at: int
    last_used_at: int | None


@dataclass(frozen=True)
class NewClient:
    """A client just created, with its secret: the only moment the secret is known in clear."""

    client: Client
    client_secret: str


class AuthFailure(Exception):
    """Client authentication failed (`throttled`: too many recent failures for this client id)."""

    def __init__(self, throttled: bool = False, retry_after: int = 0) -> None:
        super().__init__("client authentication failed")
        self.throttled = throttled
        self.retry_after = retry_after


def _client(row: Any) -> Client:
    return Client(row.client_id, row.name, ScopeSet.parse(row.scopes), row.patient, bool(row.enabled),
                  row.created_at, row.last_used_at)


def check_client_scopes(scope_text: str, patient: str | None) -> tuple[ScopeSet, str | None]:
    """Validates a client's scopes and patient context; raises Invalid naming the problem."""
    try:
        scopes = ScopeSet.parse(scope_text)
    except ScopeError as exc:
        raise Invalid(str(exc)) from None
    if not scopes.scopes:
        raise Invalid("a client needs at least one scope, e.g. system/*.rs")
    if patient is not None:
        ref = parse_reference(patient)
        if ref is None or ref.resource_type != "Patient" or ref.version_id:
            raise Invalid(f"--patient '{patient}' must be a reference like Patient/123")
        patient = ref.relative
        if scopes.contexts != {"patient"}:
            raise Invalid("a client with a patient context takes only patient/ scopes")
    elif "patient" in scopes.contexts:
        raise Invalid("patient/ scopes need a patient context (--patient Patient/ID)")
    return scopes, patient


class ClientStore:
    """Clients table access. The failure limit applies per client id within a window of seconds."""

    def __init__(self, db: Database, failure_limit: int = 10, failure_window: int = 300) -> None:
        self.db = db
        self.failure_limit = failure_limit
        self.failure_window = failure_window

    async def create(self, name: str, scope_text: str, patient: str | None = None,
                     conn: AsyncConnection | None = None) -> NewClient:
        scopes, patient = check_client_scopes(scope_text, patient)
        secret = new_secret()
        hashed = await asyncio.to_thread(hash_secret, secret)
        client = Client(secrets.token_hex(16), name, scopes, patient, True, now_us(), None)
        row = {"client_id": client.client_id, "name": name, "secret_hash": hashed, "scopes": scopes.text,
               "patient": patient, "enabled": True, "created_at": client.created_at, "last_used_at": None,
               "failed_auth_count": 0, "failed_auth_since": None}
        if conn is not None:
            await conn.execute(sa.insert(clients).values(**row))
        else:
            async with self.db.write() as c:
                await c.execute(sa.insert(clients).values(**row))
        return NewClient(client, secret)

    async def count(self, conn: AsyncConnection) -> int:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(clients))).scalar() or 0)

    async def get(self, client_id: str) -> Client | None:
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.client_id == client_id))).first()
        return _client(row) if row else None

    async def all(self) -> list[Client]:
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(clients).order_by(clients.c.created_at))).all()
        return [_client(r) for r in rows]

    async def disable(self, client_id: str) -> None:
        async with self.db.write() as conn:
            result = await conn.execute(
                sa.update(clients).where(clients.c.client_id == client_id).values(enabled=False))
        if result.rowcount != 1:
            raise NotFound(f"no client with id {client_id}")

    async def rotate_secret(self, client_id: str) -> str:
        secret = new_secret()
        hashed = await asyncio.to_thread(hash_secret, secret)
        async with self.db.write() as conn:
            result = await conn.execute(
                sa.update(clients).where(clients.c.client_id == client_id)
                .values(secret_hash=hashed, failed_auth_count=0, failed_auth_since=None))
        if result.rowcount != 1:
            raise NotFound(f"no client with id {client_id}")
        return secret

    async def authenticate(self, client_id: str, secret: str) -> Client:
        """The enabled client with this id and secret; AuthFailure otherwise (unknown id, wrong secret,
        disabled, or throttled after too many failures). Every outcome costs one scrypt."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.client_id == client_id))).first()
        if row is None:
            await asyncio.to_thread(verify_secret, secret, dummy_hash())
            raise AuthFailure()
        now = now_us()
        window_us = self.failure_window * 1_000_000
        in_window = row.failed_auth_since is not None and now - row.failed_auth_since < window_us
        if in_window and row.failed_auth_count >= self.failure_limit:
            # Refused even with the right secret: otherwise guessing could go on at full speed.
            retry_after = max(1, (row.failed_auth_since + window_us - now) // 1_000_000)
            raise AuthFailure(throttled=True, retry_after=int(retry_after))
        ok = await asyncio.to_thread(verify_secret, secret, row.secret_hash)
        if not ok:
            await self._record_failure(client_id, now, window_us)
            raise AuthFailure()
        if not row.enabled:
            raise AuthFailure()
        async with self.db.write() as conn:
            await conn.execute(sa.update(clients).where(clients.c.client_id == client_id)
                               .values(last_used_at=now, failed_auth_count=0, failed_auth_since=None))
        return _client(row)

    async def _record_failure(self, client_id: str, now: int, window_us: int) -> None:
        c = clients.c
        # One atomic statement: a new window starts when the previous one is over.
        expired = sa.or_(c.failed_auth_since.is_(None), c.failed_auth_since <= now - window_us)
        async with self.db.write() as conn:
            await conn.execute(sa.update(clients).where(c.client_id == client_id).values(
                failed_auth_count=sa.case((expired, 1), else_=c.failed_auth_count + 1),
                failed_auth_since=sa.case((expired, now), else_=c.failed_auth_since),
            ))
