"""Looking into a server's database and blob store from outside: which blobs are committed, and what the
store holds (files, objects, multipart uploads, chunk rows), to count leftovers after a crash."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from tests.support.server import ServerProcess


def sql_rows(server: ServerProcess, query: str) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the server's own database (SQLite file or PostgreSQL)."""
    url = server.env.get("FHIRVAULT_DATABASE_URL", "")
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(query).fetchall()]
    with sqlite3.connect(server.data_dir / "fhirvault.db", timeout=30) as conn:
        return [tuple(row) for row in conn.execute(query).fetchall()]


def blob_rows(server: ServerProcess) -> dict[str, list[str]]:
    """{state: [storage_key, ...]} of the blob registry."""
    out: dict[str, list[str]] = {}
    for state, key in sql_rows(server, "SELECT state, storage_key FROM blobs"):
        out.setdefault(state, []).append(key)
    return out


def stored_items(server: ServerProcess, mode: str, s3: Any = None) -> dict[str, set[str]]:
    """What the blob store holds: {"blobs": names of whole blobs, "pieces": names of pieces of
    unfinished writes (temporary files, multipart uploads)}. For `database` mode every chunk key
    counts as a blob (chunk rows do not say whether their write finished)."""
    if mode == "filesystem":
        root = Path(server.env.get("FHIRVAULT_STORAGE_DIR") or server.data_dir / "blobs")
        files = [p for p in root.rglob("*") if p.is_file()] if root.exists() else []
        return {"blobs": {p.name for p in files if not p.name.startswith(".")},
                "pieces": {p.name for p in files if p.name.startswith(".")}}
    if mode == "database":
        return {"blobs": {row[0] for row in sql_rows(server, "SELECT DISTINCT blob_key FROM blob_chunks")},
                "pieces": set()}
    assert s3 is not None, "s3 mode needs the bucket's client"
    client, bucket = s3
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(item["Key"] for item in page.get("Contents", []))
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return {"blobs": keys, "pieces": {u["Key"] for u in uploads}}


def s3_client(settings: dict[str, Any]) -> tuple[Any, str]:
    """A plain botocore client on the bucket of a server's s3 settings, and the bucket's name."""
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=settings["s3_endpoint"], region_name=settings["s3_region"],
        aws_access_key_id=settings["s3_access_key"], aws_secret_access_key=settings["s3_secret_key"],
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"))
    return client, settings["s3_bucket"]
