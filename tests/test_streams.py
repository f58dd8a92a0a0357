"""The byte-stream helpers the upload path is built from: regrouping into pieces, in-order thread work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from fhirvault.streams import InOrderWorker, pieces


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(chunks: list[bytes], size: int) -> list[bytes]:
    return [p async for p in pieces(_stream(chunks), size)]


def test_pieces_keep_every_byte_in_order_and_are_at_least_the_size_but_the_last() -> None:
    chunks = [bytes([n]) * (n * 7 % 13 + 1) for n in range(200)]
    got = asyncio.run(_collect(chunks, 64))
    assert b"".join(got) == b"".join(chunks)
    assert all(len(p) >= 64 for p in got[:-1]) and len(got[-1]) > 0


def test_a_chunk_that_is_a_whole_piece_passes_through_as_it_is() -> None:
    big = b"x" * 100
    got = asyncio.run(_collect([big, b"y" * 10], 64))
    assert got[0] is big and got[1] == b"y" * 10


def test_in_order_worker_does_the_pieces_one_after_another_in_a_thread() -> None:
    seen: list[bytes] = []
    threads: set[int] = set()

    def work(piece: bytes) -> None:
        threads.add(threading.get_ident())
        seen.append(piece)

    async def run() -> None:
        worker = InOrderWorker(work)
        for n in range(50):
            await worker.submit(bytes([n]))
        await worker.drain()

    asyncio.run(run())
    assert seen == [bytes([n]) for n in range(50)]
    assert threading.get_ident() not in threads


def test_in_order_worker_raises_the_error_of_a_failed_piece() -> None:
    def work(piece: bytes) -> None:
        if piece == b"bad":
            raise OSError("disk full")

    async def run() -> None:
        worker = InOrderWorker(work)
        await worker.submit(b"good")
        await worker.submit(b"bad")
        await worker.drain()

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(run())
