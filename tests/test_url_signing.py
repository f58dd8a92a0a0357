"""Signed storage URLs: canonical signing, windows, tampering, expiry and key rotation on a real database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from fhirvault.errors import Forbidden, Gone
from fhirvault.security.url_signing import KEY_REFRESH_SECONDS, SignedUrl, rounded_expiry
from fhirvault.store.database import Database
from tests.support.server import FhirApi, ServerProcess

T = TypeVar("T")
BASE = "https://vault.example/"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def with_db(tmp_path: Path, body: Callable[[Database], Coroutine[Any, Any, T]]) -> T:
    async def go() -> T:
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
        await db.migrate()
        try:
            return await body(db)
        finally:
            await db.close()
    return run(go())


def replace_query(url: str, **changes: str) -> str:
    split = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(split.query).items()}
    q.update(changes)
    return f"{split.scheme}://{split.netloc}{split.path}?{urlencode(q)}"


def test_rounded_expiry_is_a_window_multiple_at_least_ttl_ahead() -> None:
    assert rounded_expiry(1000, 3600, 600) == 4800
    assert rounded_expiry(1200, 3600, 600) == 4800
    assert rounded_expiry(1201, 3600, 600) == 5400


def test_mint_parse_verify_and_identical_within_a_window(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000)

    async def body(db: Database) -> None:
        signer = SignedUrl(db, BASE, ttl=3600, window=600, clock=clock)
        url = await signer.mint("abc", 1)
        assert url.startswith("https://vault.example/storage/abc/1?exp=")
        clock.now += 100  # same window
        assert await signer.mint("abc", 1) == url
        assert await signer.mint("abc", 2) != url
        parts = signer.parse(url)
        assert parts is not None and parts.binary_id == "abc" and parts.version_id == 1
        left = await signer.verify(parts)
        assert 3600 - 100 <= left <= 3600 + 600
        clock.now += 600  # next window: a new URL, the old one still valid
        assert await signer.mint("abc", 1) != url
        assert await signer.verify(parts) > 0

    with_db(tmp_path, body)


def test_every_tampered_part_is_refused_and_expiry_is_gone(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000)

    async def body(db: Database) -> None:
        signer = SignedUrl(db, BASE, ttl=60, window=10, clock=clock)
        url = await signer.mint("abc", 3)
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        tampered = [
            url.replace("/storage/abc/3", "/storage/abd/3"),
            url.replace("/storage/abc/3", "/storage/abc/2"),
            replace_query(url, exp=str(int(q["exp"]) + 10)),
            replace_query(url, kid="0" * len(q["kid"])),
            replace_query(url, sig=q["sig"][:-1] + ("A" if q["sig"][-1] != "A" else "B")),
            replace_query(url, sig=""),
        ]
        for bad in tampered:
            parts = signer.parse(bad)
            assert parts is not None, bad
            with pytest.raises(Forbidden):
                await signer.verify(parts)
        no_sig = signer.parse(url.split("?")[0])
        assert no_sig is not None
        with pytest.raises(Forbidden):
            await signer.verify(no_sig)
        good = signer.parse(url)
        assert good is not None
        clock.now += 71
        with pytest.raises(Gone):
            await signer.verify(good)
        assert await signer.verify(good, allow_expired=True) == 0
        # An expired URL with a bad signature is still refused as forged, not reported as expired.
        forged = signer.parse(replace_query(url, sig="x" * 43))
        assert forged is not None
        with pytest.raises(Forbidden):
            await signer.verify(forged, allow_expired=True)

    with_db(tmp_path, body)


def test_parse_recognises_only_our_storage_urls(tmp_path: Path) -> None:
    async def body(db: Database) -> None:
        signer = SignedUrl(db, BASE, ttl=3600, window=600)
        assert signer.parse("https://other.example/storage/abc/1?exp=1&kid=k&sig=s") is None
        assert signer.parse("https://vault.example/fhir/R4/Binary/abc") is None
        assert signer.parse("https://vault.example/storage/abc/x?exp=1") is None
        assert signer.parse("https://vault.example/storage/abc/1/2") is None
        parts = signer.parse("https://vault.example/storage/abc/7?exp=5&kid=k&sig=s")
        assert parts is not None and (parts.binary_id, parts.version_id, parts.expires) == ("abc", 7, 5)

    with_db(tmp_path, body)


def kid_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["kid"][0]


def test_rotation_new_key_signs_old_keys_verify_until_their_urls_expire(tmp_path: Path) -> None:
    clock = Clock(time.time())

    async def body(db: Database) -> None:
        node_a = SignedUrl(db, BASE, ttl=600, window=60, clock=clock)
        node_b = SignedUrl(db, BASE, ttl=600, window=60, clock=clock)
        old_url = await node_a.mint("abc", 1)
        assert kid_of(await node_b.mint("abc", 1)) == kid_of(old_url)  # the nodes share the key
        old_kid = kid_of(old_url)
        clock.now += 5
        new_kid, removed = await node_a.rotate()
        assert removed == [] and new_kid != old_kid
        # The new key signs only once every node has had time to learn it.
        assert kid_of(await node_a.mint("abc", 1)) == old_kid
        clock.now += KEY_REFRESH_SECONDS + 1
        new_url = await node_a.mint("abc", 1)
        assert kid_of(new_url) == new_kid
        # Both nodes verify both keys' URLs.
        for node in (node_a, node_b):
            for url in (old_url, new_url):
                parts = node.parse(url)
                assert parts is not None
                assert await node.verify(parts) > 0
        assert kid_of(await node_b.mint("abc", 1)) == new_kid
        # Long after, another rotation retires the first key; its URLs had expired anyway.
        clock.now += 600 + 60 + 2 * KEY_REFRESH_SECONDS
        _, removed = await node_a.rotate()
        assert removed == [old_kid]
        parts = node_a.parse(old_url)
        assert parts is not None
        with pytest.raises(Forbidden):
            await node_a.verify(parts)

    with_db(tmp_path, body)


def test_keys_rotate_url_signing_command_adds_a_key_and_old_urls_stay_valid(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    db_file = server.data_dir / "fhirvault.db"
    with server.api() as api:
        binary = api.post("/Binary", content=b"rotated", headers={"Content-Type": "text/plain"}).json()
        url = api.get(f"/DocumentReference/{_doc_for(api, binary['id'])}").json()["content"][0]["attachment"]["url"]
    before = _kids(db_file)
    done = server.cli("keys", "rotate", "--url-signing")
    assert done.returncode == 0, done.stderr
    after = _kids(db_file)
    assert len(after) == len(before) + 1 and set(before) <= set(after)
    assert set(after) - set(before) == {done.stdout.split()[4]}
    assert httpx.get(url).content == b"rotated"


def _doc_for(api: FhirApi, binary_id: str) -> str:
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"url": f"Binary/{binary_id}"}}]}
    created: str = api.post("/DocumentReference", json=doc).json()["id"]
    return created


def _kids(db_file: Path) -> list[str]:
    with sqlite3.connect(db_file) as db:
        return [row[0] for row in db.execute("select kid from url_signing_keys")]
