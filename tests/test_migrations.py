"""Schema migrations: one ordered list, applied the same way by every entry point, and old databases upgrade."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fhirvault.store.migrations import STEPS, apply_steps, schema_version
from tests.support.server import ServerProcess

RELEASE_0_1_DUMP = Path(__file__).parent / "data" / "release_0_1_sqlite.sql"

# Every command that opens the database, as `fhirvault ARGS --data-dir DIR`; its exit code does not
# matter here (several refer to things that do not exist), only that it migrated first.
CLI_ENTRY_POINTS = [
    ["clients", "create", "--name", "m", "--scope", "system/*.rs"],
    ["clients", "list"],
    ["clients", "disable", "no-such-client"],
    ["clients", "rotate-secret", "no-such-client"],
    ["keys", "rotate"],
    ["jobs", "list"],
    ["expunge", "Binary/no-such-binary"],
    ["storage", "stats"],
]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}


def _cli(data_dir: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "fhirvault.cli", *args, "--data-dir", str(data_dir)],
                   env=_env(), capture_output=True, text=True, timeout=120, check=False)


def _run_worker_until_started(data_dir: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fhirvault.cli", "worker", "--data-dir", str(data_dir)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:  # the worker prints its banner once started (migrated)
            output.append(line)
            if line.startswith("fhirvault worker:"):
                break
        else:
            pytest.fail("worker exited before starting:\n" + "".join(output))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _applied_ids(db_file: Path) -> list[str]:
    with sqlite3.connect(db_file) as db:
        return [row[0] for row in db.execute("select name from schema_migrations order by rowid")]


def _schema(db_file: Path) -> set[tuple[str, str, str]]:
    # sqlite_stat*: the planner statistics the server gathers at start (ANALYZE), data rather than schema
    with sqlite3.connect(db_file) as db:
        return {(t, n, " ".join(sql.split())) for t, n, sql in
                db.execute("select type, name, sql from sqlite_master where sql is not null "
                           "and name not like 'sqlite_stat%'")}


def test_steps_have_unique_ids_numbered_in_order() -> None:
    ids = [step.id for step in STEPS]
    numbers = [int(i.split("_", 1)[0]) for i in ids]
    assert numbers == list(range(1, len(STEPS) + 1))
    former = [name for step in STEPS for name in step.formerly]
    assert len(set(ids + former)) == len(ids) + len(former)
    assert schema_version() == len(STEPS)


def test_every_entry_point_migrates_the_same_way(tmp_path: Path) -> None:
    """Each entry point, alone on a new database, applies every step in the listed order and ends with
    the same tables and indexes as the server."""
    server = ServerProcess(tmp_path / "serve", {}).start()
    server.stop()
    reference = _schema(tmp_path / "serve" / "fhirvault.db")
    assert _applied_ids(tmp_path / "serve" / "fhirvault.db") == [step.id for step in STEPS]

    _run_worker_until_started(tmp_path / "worker")
    starts = {"worker": tmp_path / "worker"}
    for i, args in enumerate(CLI_ENTRY_POINTS):
        data_dir = tmp_path / f"cli{i}"
        _cli(data_dir, *args)
        starts[" ".join(args)] = data_dir
    for name, data_dir in starts.items():
        db_file = data_dir / "fhirvault.db"
        assert _applied_ids(db_file) == [step.id for step in STEPS], name
        assert _schema(db_file) == reference, name


def _load_release_0_1(data_dir: Path) -> Path:
    """A database written by `fhirvault serve` of release 0.1, which recorded its steps as 0001_resources,
    0002_security, 0002_blobs, 0004_url_signing_keys, 0010_jobs; it holds Patient/old, Binary/oldbin
    (inline) and DocumentReference/olddoc pointing at it."""
    data_dir.mkdir(parents=True)
    db_file = data_dir / "fhirvault.db"
    with sqlite3.connect(db_file) as db:
        db.executescript(RELEASE_0_1_DUMP.read_text())
    return db_file


def test_release_0_1_database_upgrades_on_server_start(tmp_path: Path) -> None:
    db_file = _load_release_0_1(tmp_path / "data")
    with sqlite3.connect(db_file) as db:
        old_keys = list(db.execute("select kid from url_signing_keys"))
    server = ServerProcess(tmp_path / "data", {}).start()
    try:
        with server.api() as api:
            assert api.get("/Patient/old").json()["active"] is True
            raw = api.get("/Binary/oldbin")
            assert raw.content == b"bytes of the previous release"
            url = api.get("/DocumentReference/olddoc").json()["content"][0]["attachment"]["url"]
            assert api.get(url, headers={"Authorization": ""}).content == b"bytes of the previous release"
            assert api.post("/Patient", json={"resourceType": "Patient"}).status_code == 201
    finally:
        server.stop()
    assert _applied_ids(db_file) == [step.id for step in STEPS]
    with sqlite3.connect(db_file) as db:
        # The URL-signing key step was not run again: URLs signed before the upgrade stay valid.
        assert list(db.execute("select kid from url_signing_keys")) == old_keys


def test_release_0_1_database_upgrades_from_a_cli_command(tmp_path: Path) -> None:
    """The `clients` command of release 0.1 saw only three steps; the new one upgrades the whole schema."""
    db_file = _load_release_0_1(tmp_path / "data")
    _cli(tmp_path / "data", "clients", "list")
    assert _applied_ids(db_file) == [step.id for step in STEPS]
    server = ServerProcess(tmp_path / "serve", {}).start()
    server.stop()
    assert _schema(db_file) == _schema(tmp_path / "serve" / "fhirvault.db")


def test_first_release_database_gets_every_later_step(tmp_path: Path) -> None:
    """A database with only the first step applied gets the others, in order, each once."""
    from fhirvault.store.database import Database

    db_file = tmp_path / "fhirvault.db"

    async def run() -> tuple[list[str], list[str], list[str]]:
        db = Database(f"sqlite+aiosqlite:///{db_file}")
        try:
            async with db.write() as conn:
                first = await apply_steps(conn, postgres=False, steps=STEPS[:1])
            async with db.write() as conn:
                rest = await apply_steps(conn, postgres=False)
            async with db.write() as conn:
                again = await apply_steps(conn, postgres=False)
            return first, rest, again
        finally:
            await db.close()

    first, rest, again = asyncio.run(run())
    assert first == [STEPS[0].id]
    assert rest == [step.id for step in STEPS[1:]]
    assert again == []
    assert _applied_ids(db_file) == [step.id for step in STEPS]
