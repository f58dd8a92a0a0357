"""The Python client's uploads and downloads, sync and async. Until the server has Binary, signed
URLs and the $binary-access operations, they run against a local stand-in that records requests."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fhirvault.client import AsyncFhirClient, FhirClient, IntegrityError, NotFoundError
from tests.support.binary import sha1_b64
from tests.support.clients import AwaitedClient, open_client
from tests.support.standin import StandIn, StandInServer

PAYLOAD = bytes(range(256)) * 1200 + b"tail"   # a little over 300 KiB: several chunks


@pytest.fixture(params=["sync", "async"])
def fhir(request: pytest.FixtureRequest, standin: StandIn) -> Iterator[Any]:
    with open_client(request.param, standin.base, client_id=standin.client_id,
                     client_secret=standin.client_secret) as client:
        yield client


def chunks_of(data: bytes, size: int = 70_000) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("kind", ["bytes", "str", "path", "file", "iterator"])
def test_create_binary_from_every_kind_of_data(fhir: Any, standin: StandIn, tmp_path: Path, kind: str) -> None:
    expected = PAYLOAD
    progress: list[tuple[int, int | None]] = []
    if kind == "bytes":
        data: Any = PAYLOAD
    elif kind == "str":
        data = "grüße, not base64"
        expected = data.encode("utf-8")
    elif kind == "path":
        data = tmp_path / "scan.png"
        data.write_bytes(PAYLOAD)
    elif kind == "file":
        (tmp_path / "f.bin").write_bytes(PAYLOAD)
        data = (tmp_path / "f.bin").open("rb")
    else:
        data = chunks_of(PAYLOAD)
    binary = fhir.create_binary(data, security_context="Patient/7", on_progress=lambda s, t: progress.append((s, t)))
    post = standin.requests_to("/fhir/R4/Binary")[-1]
    assert post.body_size == len(expected) and post.body_sha1_b64 == sha1_b64(expected)
    assert post.headers["x-security-context"] == "Patient/7"
    assert binary["resourceType"] == "Binary" and binary["securityContext"] == {"reference": "Patient/7"}
    # Known lengths go as Content-Length; an iterator goes chunked.
    if kind == "iterator":
        assert post.headers.get("transfer-encoding") == "chunked" and progress[-1] == (len(expected), None)
    else:
        assert post.headers["content-length"] == str(len(expected)) and progress[-1] == (len(expected), len(expected))
    assert [s for s, _ in progress] == sorted(s for s, _ in progress) and len(progress) >= 1
    if kind == "path":
        assert post.headers["content-type"] == "image/png" and post.query["_filename"] == ["scan.png"]
    else:
        assert post.headers["content-type"] == "application/octet-stream"
    assert fhir.download(f"Binary/{binary['id']}") == expected


def test_async_client_uploads_an_async_iterator(standin: StandIn) -> None:
    async def produce() -> AsyncIterator[bytes]:
        for piece in chunks_of(PAYLOAD):
            yield piece

    awaited = AwaitedClient(AsyncFhirClient(standin.base, client_id=standin.client_id,
                                            client_secret=standin.client_secret))
    try:
        attachment = awaited.create_attachment(produce(), filename="n.txt")
    finally:
        awaited.close()
    assert attachment["size"] == len(PAYLOAD) and attachment["hash"] == sha1_b64(PAYLOAD)
    assert attachment["contentType"] == "text/plain"


def test_sync_client_refuses_an_async_iterator(standin: StandIn) -> None:
    async def produce() -> AsyncIterator[bytes]:
        yield b"x"

    with FhirClient(standin.base) as client, pytest.raises(TypeError, match="AsyncFhirClient"):
        client.create_binary(produce())


def test_create_attachment_media_and_document_reference(fhir: Any, standin: StandIn) -> None:
    attachment = fhir.create_attachment(PAYLOAD, filename="report.pdf")
    blob_id = attachment["url"].removeprefix("Binary/")
    assert attachment == {"contentType": "application/pdf", "url": f"Binary/{blob_id}", "title": "report.pdf",
                          "size": len(PAYLOAD), "hash": sha1_b64(PAYLOAD)}
    assert standin.blobs[blob_id].filename == "report.pdf"

    media = fhir.create_media(b"\x89PNG...", content_type="image/png", media={"subject": {"reference": "Patient/1"}})
    assert media["resourceType"] == "Media" and media["status"] == "completed"
    assert media["content"]["url"].startswith("Binary/") and media["content"]["contentType"] == "image/png"
    assert media["subject"] == {"reference": "Patient/1"} and media["content"]["size"] == 7

    doc = fhir.create_document_reference(b"%PDF-1.7", filename="letter.pdf")
    assert doc["content"][0]["attachment"]["url"].startswith("Binary/")
    assert doc["content"][0]["attachment"]["title"] == "letter.pdf"
    assert fhir.download(doc["content"][0]["attachment"]) == b"%PDF-1.7"


def test_download_to_path_file_object_and_range(fhir: Any, tmp_path: Path) -> None:
    attachment = fhir.create_attachment(PAYLOAD)
    target = tmp_path / "out.bin"
    seen: list[tuple[int, int | None]] = []
    assert fhir.download(attachment, target, on_progress=lambda d, t: seen.append((d, t))) is None
    assert target.read_bytes() == PAYLOAD and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not list(tmp_path.glob(".*.part"))
    buffer = io.BytesIO()
    fhir.download(attachment["url"], buffer)
    assert buffer.getvalue() == PAYLOAD
    assert fhir.download(attachment, byte_range=(1000, 1010)) == PAYLOAD[1000:1010]
    assert fhir.download(attachment, byte_range=(len(PAYLOAD) - 4, None)) == b"tail"


def test_signed_url_download_carries_no_authorization(fhir: Any, standin: StandIn) -> None:
    binary = fhir.create_binary(PAYLOAD)
    assert standin.requests_to("/fhir/R4/Binary")[-1].headers["authorization"].startswith("Bearer ")
    # Same host as the FHIR server, but outside the FHIR base: no token.
    assert fhir.download(binary["url"]) == PAYLOAD
    storage_get = standin.requests_to("/storage/")[-1]
    assert "authorization" not in storage_get.headers
    # Another host (a storage host on its own port): no token either.
    with StandInServer() as storage_host:
        storage_host.blobs.update(standin.blobs)
        assert fhir.download(storage_host.signed_url(binary["id"])) == PAYLOAD
        assert storage_host.requests and all("authorization" not in r.headers for r in storage_host.requests)


def test_redirect_from_fhir_server_to_storage_host_drops_the_token(fhir: Any, standin: StandIn) -> None:
    binary = fhir.create_binary(PAYLOAD)
    with StandInServer() as storage_host:
        storage_host.blobs.update(standin.blobs)
        standin.redirect_downloads_to = storage_host.url
        assert fhir.download(f"Binary/{binary['id']}") == PAYLOAD
        assert standin.requests_to(f"/fhir/R4/Binary/{binary['id']}")[-1].headers["authorization"]
        assert [("authorization" in r.headers) for r in storage_host.requests] == [False]


def test_wrong_hash_or_size_is_detected_and_nothing_is_left(fhir: Any, tmp_path: Path) -> None:
    attachment = fhir.create_attachment(PAYLOAD)
    target = tmp_path / "verified.bin"
    with pytest.raises(IntegrityError, match="hash"):
        fhir.download({**attachment, "hash": sha1_b64(b"something else")}, target)
    assert not target.exists() and not list(tmp_path.iterdir())
    with pytest.raises(IntegrityError, match="size"):
        fhir.download({**attachment, "size": len(PAYLOAD) + 1})
    assert fhir.download(attachment, target) is None and target.read_bytes() == PAYLOAD


def test_inline_attachment_data_is_decoded(fhir: Any) -> None:
    attachment = {"contentType": "text/plain", "data": base64.b64encode(b"inline!").decode(),
                  "size": 7, "hash": sha1_b64(b"inline!")}
    assert fhir.download(attachment) == b"inline!"


def test_download_error_raises_with_outcome(fhir: Any, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="Binary/nope is not known"):
        fhir.download("Binary/nope", tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_binary_access_write_and_read(fhir: Any, standin: StandIn) -> None:
    path = "DocumentReference.content[0].attachment"
    updated = fhir.binary_access_write("DocumentReference/d1", path, chunks_of(PAYLOAD), "application/pdf")
    assert updated["content"][0]["attachment"]["size"] == len(PAYLOAD)
    write = standin.requests_to("/fhir/R4/DocumentReference/d1/$binary-access-write")[-1]
    assert write.query["path"] == [path] and write.headers["content-type"] == "application/pdf"
    assert fhir.binary_access_read("DocumentReference/d1", path) == PAYLOAD
