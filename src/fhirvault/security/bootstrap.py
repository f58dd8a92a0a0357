"""First start: an admin client when the database has none, its credentials written once to the data dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import sqlalchemy as sa

from fhirvault.security.clients import ClientStore, NewClient
from fhirvault.store.database import Database

ADMIN_FILE = "admin-client.json"
ADMIN_SCOPE = "system/*.*"


def write_private_json(path: Path, data: dict[str, str]) -> None:
    """Writes `data` to `path` readable by the owner only (mode 0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)
        json.dump(data, fh, indent=2)
        fh.write("\n")


async def ensure_admin_client(db: Database, clients: ClientStore, data_dir: Path, token_url: str,
                              fhir_base_url: str) -> NewClient | None:
    """Creates the admin client when no client exists; None when there already was one."""
    async with db.write() as conn:
        if not db.is_sqlite:
            # Several nodes starting together on one fresh database create one admin, not several.
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7262012)"))
        if await clients.count(conn):
            return None
        new = await clients.create("admin", ADMIN_SCOPE, conn=conn)
        data_dir.mkdir(parents=True, exist_ok=True)
        # Written before the commit: if the file cannot be written, no client is created either.
        write_private_json(data_dir / ADMIN_FILE, {
            "client_id": new.client.client_id, "client_secret": new.client_secret,
            "token_url": token_url, "fhir_base_url": fhir_base_url,
        })
    return new
