"""The malware scanner interface: bytes in, a verdict out (clean, or infected with the signature's name)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Verdict:
    """What a scanner said about some bytes: `infected` and the signature name, or clean (`signature` None);
    `too_large` when the scanner refused the stream for its own size limit (nothing was decided)."""

    infected: bool
    signature: str | None = None
    too_large: bool = False


class ScannerUnavailable(Exception):
    """The scanner could not be reached or answered something unusable; trying again later may succeed."""


class Scanner(Protocol):
    """A malware scanner. `scan` consumes the chunks (in order, any sizes) and returns the verdict; raises
    ScannerUnavailable when the scanner is away or fails."""

    name: str

    async def scan(self, chunks: AsyncIterator[bytes]) -> Verdict:
        """Scans the bytes of `chunks` (consumed in order) and returns the verdict; raises ScannerUnavailable
        when the scanner is away or fails."""

    async def ping(self) -> None:
        """Raises ScannerUnavailable unless the scanner answers."""
        ...
