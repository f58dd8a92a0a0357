"""The byte-stream helpers the upload path is built from: gathering chunks into batches, in-order thread work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from fhirvault.streams import InOrderWorker, batches


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _collect(chunks: list[bytes], size: int) -> list[list[bytes]]:
    return [b async for b in batches(_stream(chunks), size)]


def test_batches_keep_every_chunk_in_order_and_hold_at_least_the_size_but_the_last() -> None:
    chunks = [bytes([n]) * (n * 7 % 13 + 1) for n in range(200)]
    got = asyncio.run(_collect(chunks, 64))
    assert [c for batch in got for c in batch] == chunks
    assert all(sum(map(len, b)) >= 64 for b in got[:-1]) and got[-1]
    assert all(sum(map(len, b[:-1])) < 64 for b in got)  # a batch closes as soon as it is big enough


def test_batches_hand_on_the_chunks_themselves_not_copies() -> None:
    big, small = b"x" * 100, b"y" * 10
    got = asyncio.run(_collect([big, small], 64))
    assert got == [[big], [small]] and got[0][0] is big and got[1][0] is small


def test_no_chunks_make_no_batch() -> None:
    assert asyncio.run(_collect([], 64)) == []


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
