"""Starting the server: zero-config defaults, restarts and schema migration."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.server import ServerProcess, admin_headers, free_port


def test_zero_config_serve_in_empty_directory(tmp_path: Path) -> None:
    port = free_port()
    # DATABASE_URL, the name other tools use, is not fhirvault's setting: the banner says which database
    # is used, and a note says that one was not read (it used to be ignored without a word)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env["DATABASE_URL"] = "postgresql+psycopg://someone:hunter2@127.0.0.1/elsewhere"
    proc = subprocess.Popen([sys.executable, "-m", "fhirvault.cli", "serve", "--port", str(port)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}/fhir/R4"
        assert proc.stdout is not None
        first_line = proc.stdout.readline().decode()
        assert base in first_line
        banner = "".join(proc.stdout.readline().decode() for _ in range(3))
        assert f"database: sqlite+aiosqlite:///{tmp_path.resolve()}" in banner, banner
        assert "DATABASE_URL is set but not read; the setting is FHIRVAULT_DATABASE_URL" in banner, banner
        assert "hunter2" not in banner
        for _ in range(200):
            try:
                httpx.get(f"{base}/metadata", timeout=1)
                break
            except httpx.HTTPError:
                import time
                time.sleep(0.05)
        data_dir = tmp_path / "fhirvault-data"
        assert (data_dir / "admin-client.json").stat().st_mode & 0o777 == 0o600
        headers = admin_headers(f"http://127.0.0.1:{port}", data_dir)
        r = httpx.post(f"{base}/Patient", json={"resourceType": "Patient"},
                       headers={"Content-Type": "application/fhir+json", **headers})
        assert r.status_code == 201
        assert r.headers["Location"].startswith(f"{base}/Patient/")
        assert (tmp_path / "fhirvault-data" / "fhirvault.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_restart_keeps_every_resource_and_version(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", {}).start()
    try:
        with server.api() as api:
            r = api.post("/Patient", json={"resourceType": "Patient", "active": True})
            pid = r.json()["id"]
            api.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": False})
    finally:
        server.stop()
    server.start()
    try:
        # The token issued before the restart still verifies: the signing key lives in the database.
        with server.api() as api:
            assert api.get(f"/Patient/{pid}").json()["active"] is False
            assert api.get(f"/Patient/{pid}/_history/1").json()["active"] is True
            assert api.get(f"/Patient/{pid}/_history").json()["total"] == 2
    finally:
        server.stop()


def test_database_from_first_release_is_upgraded_not_dropped(tmp_path: Path) -> None:
    """A database at schema version 1 holding a resource is migrated to the newest schema on start."""
    import asyncio

    from fhirvault.store.database import Database
    from fhirvault.store.migrations import STEPS, apply_steps

    data = tmp_path / "data"
    data.mkdir()
    url = f"sqlite+aiosqlite:///{data / 'fhirvault.db'}"

    async def make_v1() -> None:
        db = Database(url)
        async with db.write() as conn:
            assert await apply_steps(conn, postgres=False, steps=STEPS[:1]) == ["0001_resources"]
        await db.close()

    asyncio.run(make_v1())
    content = '{"resourceType":"Patient","id":"old","meta":{"versionId":"1","lastUpdated":"2020-01-01T00:00:00+00:00"}}'
    db = sqlite3.connect(data / "fhirvault.db")
    cols = "resource_type, id, version_id, last_updated, deleted, content"
    vals = "'Patient', 'old', 1, 1577836800000000, 0, ?"
    db.execute(f"insert into resources ({cols}) values ({vals})", (content,))
    db.execute(f"insert into resource_versions ({cols}, method) values ({vals}, 'PUT')", (content,))
    db.commit()
    db.close()
    server = ServerProcess(data, {}).start()
    try:
        with server.api() as api:
            assert api.get("/Patient/old").json()["id"] == "old"
            pid = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
            assert api.get(f"/Patient/{pid}").status_code == 200
    finally:
        server.stop()
    db = sqlite3.connect(data / "fhirvault.db")
    applied = [row[0] for row in db.execute("select name from schema_migrations order by rowid")]
    assert applied == [step.id for step in STEPS]
    db.close()
