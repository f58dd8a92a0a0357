"""Bytes in transit: upload bodies read chunk by chunk, and download sinks that count, hash,
trim and verify as chunks arrive — neither ever holds a whole file."""

from __future__ import annotations

import base64
import hashlib
import io
import mimetypes
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from fhirvault.client.errors import IntegrityError, simple_outcome

CHUNK_SIZE = 256 * 1024

ProgressCallback = Callable[[int, int | None], None]
"""Called as `on_progress(bytes_so_far, total_or_None)` after each chunk."""

Destination = str | Path | IO[bytes] | None


def guess_content_type(filename: str | None) -> str:
    """The MIME type for a file name's extension, `application/octet-stream` when unknown."""
    if filename:
        guessed, _ = mimetypes.guess_type(filename, strict=False)
        if guessed:
            return guessed
    return "application/octet-stream"


class UploadBody:
    """One upload body. Counts and SHA-1-hashes the bytes as they are sent (for Attachment.size and
    .hash) and reports progress; `total` is the length when it is known without reading the data."""

    def __init__(self, data: UploadData, on_progress: ProgressCallback | None = None) -> None:
        if isinstance(data, UploadBody):
            raise TypeError("already an UploadBody")
        if isinstance(data, str):
            # Text goes up as its UTF-8 bytes; base64 text is NOT decoded (see create_binary).
            data = data.encode("utf-8")
        self._data: Any = data
        self._on_progress = on_progress
        self._sha1 = hashlib.sha1()
        self.sent = 0
        self.total: int | None = None
        self.name: str | None = None
        if isinstance(data, bytes | bytearray | memoryview):
            self.total = memoryview(data).nbytes
        elif isinstance(data, Path):
            self.total = data.stat().st_size
            self.name = data.name
        elif _is_file(data):
            self.total = _remaining_length(data)
            name = getattr(data, "name", None)
            self.name = os.path.basename(name) if isinstance(name, str) else None
        elif not isinstance(data, Iterable | AsyncIterable):
            raise TypeError(f"cannot upload a {type(data).__name__}: give bytes, str, a Path, a binary file "
                            "object or an iterator of bytes")

    @property
    def sha1_b64(self) -> str:
        """R4 Attachment.hash of what was sent: base64 of the SHA-1."""
        return base64.b64encode(self._sha1.digest()).decode("ascii")

    @property
    def is_async(self) -> bool:
        """Whether the data is an async iterable (only the async client can send it)."""
        return isinstance(self._data, AsyncIterable)

    def _passed(self, chunk: bytes) -> bytes:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"upload iterators must yield bytes, got {type(chunk).__name__}")
        chunk = bytes(chunk)
        self._sha1.update(chunk)
        self.sent += len(chunk)
        if self._on_progress is not None:
            self._on_progress(self.sent, self.total)
        return chunk

    def chunks(self) -> Iterator[bytes]:
        """The body for a synchronous HTTP client."""
        for chunk in self._source_chunks():
            if chunk:
                yield self._passed(chunk)

    async def achunks(self) -> AsyncIterator[bytes]:
        """The body for an asynchronous HTTP client (also accepts every synchronous kind of data)."""
        if isinstance(self._data, AsyncIterable):
            async for chunk in self._data:
                if chunk:
                    yield self._passed(chunk)
        else:
            for chunk in self.chunks():
                yield chunk

    def _source_chunks(self) -> Iterator[bytes]:
        data = self._data
        if isinstance(data, bytes | bytearray | memoryview):
            view = memoryview(data).cast("B")
            for start in range(0, len(view), CHUNK_SIZE):
                yield bytes(view[start:start + CHUNK_SIZE])
        elif isinstance(data, Path):
            with data.open("rb") as fh:
                yield from _read_file(fh)
        elif _is_file(data):
            yield from _read_file(data)
        elif isinstance(data, AsyncIterable):
            raise TypeError("an async iterator can only be uploaded with AsyncFhirClient")
        else:
            yield from data


UploadData = (bytes | bytearray | memoryview | str | Path | IO[bytes] | Iterable[bytes] | AsyncIterable[bytes]
              | UploadBody)
"""What can be uploaded (an UploadBody passes through as is)."""


def _is_file(data: Any) -> bool:
    return hasattr(data, "read") and not isinstance(data, bytes | bytearray | memoryview | str | Path)


def _read_file(fh: IO[bytes]) -> Iterator[bytes]:
    while True:
        chunk = fh.read(CHUNK_SIZE)
        if isinstance(chunk, str):
            raise TypeError("the file object is open in text mode; open it with 'rb'")
        if not chunk:
            return
        yield chunk


def _remaining_length(fh: Any) -> int | None:
    try:
        if fh.seekable():
            here = fh.tell()
            end = fh.seek(0, io.SEEK_END)
            fh.seek(here)
            return int(end - here)
    except (OSError, AttributeError, ValueError):
        pass
    return None


class DownloadSink:
    """Where a download's bytes go (a path, a binary file object, or memory). A path is written
    under a temporary name and renamed only once the bytes are complete and verified."""

    def __init__(self, dest: Destination, *, expected_size: int | None = None,
                 expected_sha1_b64: str | None = None, byte_range: tuple[int, int | None] | None = None,
                 on_progress: ProgressCallback | None = None) -> None:
        self._dest = dest
        self._expected_size = None if byte_range else expected_size
        self._expected_hash = None if byte_range else expected_sha1_b64
        self._range = byte_range
        self._on_progress = on_progress
        self._sha1 = hashlib.sha1()
        self._skip = 0              # bytes to drop when a server ignored our Range
        self._limit: int | None = None
        self.received = 0
        self.total: int | None = None
        self._buffer: io.BytesIO | None = None
        self._file: IO[bytes] | None = None
        self._part: Path | None = None

    def begin(self, status: int, headers: Any) -> None:
        """Called once the response status and headers are in, before the first chunk."""
        length = headers.get("content-length")
        self.total = int(length) if length and length.isdigit() else None
        if self._range is not None and status == 200:
            # The server sent the whole content: keep only the asked-for slice.
            start, stop = self._range
            self._skip = start
            self._limit = None if stop is None else stop - start
            if self.total is not None:
                self.total = max(0, min(self.total, stop if stop is not None else self.total) - start)
        if self._dest is None:
            self._buffer = io.BytesIO()
            self._file = self._buffer
        elif isinstance(self._dest, str | Path):
            final = Path(self._dest)
            self._part = final.with_name(f".{final.name}.part")
            self._file = self._part.open("wb")
        else:
            self._file = self._dest

    def write(self, chunk: bytes) -> None:
        """Takes the next piece of the response body: skips what precedes a requested range when the server
        sent the whole representation, hashes and counts it, reports progress and writes it to the
        destination."""
        if self._skip:
            dropped = min(self._skip, len(chunk))
            chunk = chunk[dropped:]
            self._skip -= dropped
        if self._limit is not None:
            chunk = chunk[: max(0, self._limit - self.received)]
        if not chunk:
            return
        assert self._file is not None
        self._file.write(chunk)
        self._sha1.update(chunk)
        self.received += len(chunk)
        if self._on_progress is not None:
            self._on_progress(self.received, self.total)

    def finish(self) -> bytes | None:
        """Verify size and hash (when the Attachment gave them); return the bytes when kept in memory."""
        try:
            self._verify()
        except BaseException:
            self.abort()
            raise
        if self._part is not None:
            assert self._file is not None
            self._file.close()
            self._part.replace(Path(str(self._dest)))
        return self._buffer.getvalue() if self._buffer is not None else None

    def abort(self) -> None:
        """Drop a partial download written to a path."""
        if self._part is not None:
            if self._file is not None:
                self._file.close()
            self._part.unlink(missing_ok=True)
            self._part = None

    def _verify(self) -> None:
        if self._expected_size is not None and self.received != self._expected_size:
            raise IntegrityError(0, simple_outcome(
                f"downloaded {self.received} bytes but the Attachment's size is {self._expected_size}", "integrity"))
        if self._expected_hash is not None:
            got = base64.b64encode(self._sha1.digest()).decode("ascii")
            if got != self._expected_hash:
                raise IntegrityError(0, simple_outcome(
                    f"downloaded bytes have SHA-1 {got} but the Attachment's hash is {self._expected_hash}",
                    "integrity"))


def shifted_progress(on_progress: ProgressCallback | None, before: int, total: int) -> ProgressCallback | None:
    """Progress of one piece of an upload (a PUT part, a PATCH) reported as progress of the whole content:
    `before` bytes were sent before this piece, `total` is the content's size in bytes."""
    if on_progress is None:
        return None
    callback = on_progress

    def report(sent: int, _: int | None) -> None:
        callback(before + sent, total)

    return report


def file_slice(path: Path, offset: int, length: int, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes [offset, offset + length) of the file at `path`, in chunks of at most `chunk_size` bytes;
    OSError when the file turns out shorter (it changed while it was uploaded)."""
    with path.open("rb") as fh:
        fh.seek(offset)
        left = length
        while left > 0:
            chunk = fh.read(min(chunk_size, left))
            if not chunk:
                raise OSError(f"{path} became shorter while it was uploaded")
            left -= len(chunk)
            yield chunk
