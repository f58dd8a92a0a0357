"""OAuth2 clients in the database: creation, listing, disabling, secret rotation, authentication."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.clock import now_us
from fhirvault.errors import Invalid, NotFound
from fhirvault.fhir.references import parse_reference
from fhirvault.security.scopes import ScopeError, ScopeSet
from fhirvault.security.secret_hash import dummy_hash, hash_secret, new_secret, verify_secret
from fhirvault.store.database import Database
from fhirvault.store.security import auth_failures, clients


@dataclass(frozen=True)
class Client:
    """One OAuth2 client as stored (never its secret): `scopes` parsed SMART scopes, `patient` a "Patient/id"
    launch context or None, times in microseconds since the epoch."""

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


def _id_hash(client_id: str) -> str:
    """The key of an id's attempt count: fixed length whatever the caller sent, and no id stored in clear."""
    return hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


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
        """Creates an enabled client and returns it with its new secret (shown once, stored only hashed);
        inside `conn` when given, else in its own transaction. Raises Invalid for bad scopes or
        patient context."""
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
        """The number of clients, enabled or not, in the caller's transaction `conn` (0 means a first start)."""
        return int((await conn.execute(sa.select(sa.func.count()).select_from(clients))).scalar() or 0)

    async def get(self, client_id: str) -> Client | None:
        """The client with id `client_id`, or None."""
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.client_id == client_id))).first()
        return _client(row) if row else None

    async def all(self) -> list[Client]:
        """Every client, oldest first."""
        async with self.db.read() as conn:
            rows = (await conn.execute(sa.select(clients).order_by(clients.c.created_at))).all()
        return [_client(r) for r in rows]

    async def disable(self, client_id: str) -> None:
        """Disables a client so its tokens and secret stop working; raises NotFound for an unknown id."""
        async with self.db.write() as conn:
            result = await conn.execute(
                sa.update(clients).where(clients.c.client_id == client_id).values(enabled=False))
        if result.rowcount != 1:
            raise NotFound(f"no client with id {client_id}")

    async def rotate_secret(self, client_id: str) -> str:
        """Replaces a client's secret and clears its failure count; returns the new secret (shown once).
        Raises NotFound for an unknown id."""
        secret = new_secret()
        hashed = await asyncio.to_thread(hash_secret, secret)
        async with self.db.write() as conn:
            result = await conn.execute(
                sa.update(clients).where(clients.c.client_id == client_id)
                .values(secret_hash=hashed, failed_auth_count=0, failed_auth_since=None))
            id_hash = _id_hash(client_id)
            await conn.execute(sa.delete(auth_failures).where(auth_failures.c.id_hash == id_hash))
        if result.rowcount != 1:
            raise NotFound(f"no client with id {client_id}")
        return secret

    async def authenticate(self, client_id: str, secret: str) -> Client:
        """The enabled client with this id and secret; AuthFailure otherwise (unknown id, wrong secret,
        disabled, or throttled after too many attempts). Known and unknown ids are treated alike: each
        attempt is counted before its secret is checked (one atomic statement, so concurrent guesses
        count too), an unknown id costs one scrypt like a known one, and only success clears the count."""
        now = now_us()
        window_us = self.failure_window * 1_000_000
        id_hash = _id_hash(client_id)
        attempts, since = await self._count_attempt(id_hash, now, window_us)
        if attempts > self.failure_limit:
            # Refused even with the right secret: otherwise guessing could go on at full speed.
            retry_after = max(1, (since + window_us - now) // 1_000_000)
            raise AuthFailure(throttled=True, retry_after=int(retry_after))
        async with self.db.read() as conn:
            row = (await conn.execute(sa.select(clients).where(clients.c.client_id == client_id))).first()
        ok = await asyncio.to_thread(verify_secret, secret, row.secret_hash if row else dummy_hash())
        if row is None or not ok or not row.enabled:
            raise AuthFailure()
        async with self.db.write() as conn:
            await conn.execute(sa.delete(auth_failures).where(
                sa.or_(auth_failures.c.id_hash == id_hash, auth_failures.c.since <= now - window_us)))
            await conn.execute(sa.update(clients).where(clients.c.client_id == client_id)
                               .values(last_used_at=now, failed_auth_count=0, failed_auth_since=None))
        return _client(row)

    async def _count_attempt(self, id_hash: str, now: int, window_us: int) -> tuple[int, int]:
        """Counts one attempt for the id: (attempts in the current window, when the window began). A new
        window starts when the previous one is over. One upsert, atomic on SQLite and PostgreSQL."""
        t = auth_failures
        insert = sqlite_insert(t) if self.db.is_sqlite else pg_insert(t)
        expired = t.c.since <= now - window_us
        stmt = insert.values(id_hash=id_hash, attempts=1, since=now).on_conflict_do_update(
            index_elements=[t.c.id_hash],
            set_={"attempts": sa.case((expired, 1), else_=t.c.attempts + 1),
                  "since": sa.case((expired, now), else_=t.c.since)},
        ).returning(t.c.attempts, t.c.since)
        async with self.db.write() as conn:
            row = (await conn.execute(stmt)).one()
        return int(row.attempts), int(row.since)
