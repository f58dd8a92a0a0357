"""Byte streams shared by every layer: the async iterators of chunks that bodies and blobs travel as."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """`data` as a stream of a single chunk (bytes already in memory, passed where a stream is taken)."""
    yield data
