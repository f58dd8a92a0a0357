"""FhirClient / AsyncFhirClient `create_binary(path, resumable=True)` and `fhirvault upload --resumable`
against a real server: resuming after a cut connection and after an interrupted process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirvault.client import AsyncFhirClient, FhirClient
from tests.support.cut_proxy import CutProxy, cut_proxy
from tests.support.server import ServerProcess, free_port, settings_env

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, CutProxy]]:
    """A server whose public base URL (and so every upload URL) is a cutting proxy in front of it."""
    with ExitStack() as stack:
        port = free_port()
        proxy = stack.enter_context(cut_proxy(port))
        server = ServerProcess(tmp_path_factory.mktemp("tus-client"), settings_env(public_base_url=proxy.url),
                               port=port).start()
        stack.callback(server.stop)
        yield server, proxy


def credentials(server: ServerProcess) -> dict[str, str]:
    creds: dict[str, str] = json.loads((server.data_dir / "admin-client.json").read_text())
    return {"client_id": creds["client_id"], "client_secret": creds["client_secret"]}


def connect(server: ServerProcess, proxy: CutProxy) -> FhirClient:
    return FhirClient(f"{proxy.url}/fhir/R4", token_url=f"{server.url}/oauth2/token", **credentials(server))


class Interrupt(Exception):
    pass


def test_resumes_within_the_call_after_a_cut(proxied: tuple[ServerProcess, CutProxy], tmp_path: Path) -> None:
    server, proxy = proxied
    data = os.urandom(9 * MiB + 5)
    path = tmp_path / "scan.tiff"
    path.write_bytes(data)
    seen: list[int] = []
    before = proxy.sent
    proxy.cut_after(6 * MiB)
    with connect(server, proxy) as client:
        binary = client.create_binary(path, resumable=True, state_dir=tmp_path / "state",
                                      on_progress=lambda done, total: seen.append(done))
        assert client.download(f"Binary/{binary['id']}") == data
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "image/tiff"
    assert proxy.cuts >= 1
    assert seen[-1] == len(data)
    assert proxy.sent - before < len(data) * 1.2  # only what the server had not stored went again
    assert list((tmp_path / "state").iterdir()) == []  # the state goes once the Binary exists


def test_an_interrupted_upload_goes_on_from_the_servers_offset_in_the_cli(
        proxied: tuple[ServerProcess, CutProxy], tmp_path: Path) -> None:
    server, proxy = proxied
    home = tmp_path / "home"
    data = os.urandom(8 * MiB)
    path = tmp_path / "video.mp4"
    path.write_bytes(data)

    def stop_halfway(done: int, total: int | None) -> None:
        if done >= 4 * MiB:
            raise Interrupt

    with connect(server, proxy) as client, pytest.raises(Interrupt):
        client.create_binary(path, resumable=True, state_dir=home / ".cache" / "fhirvault" / "uploads",
                             chunk_size=MiB, on_progress=stop_halfway)
    states = list((home / ".cache" / "fhirvault" / "uploads").iterdir())
    assert len(states) == 1
    # It names the server and the file: readable by the user only, whatever the umask.
    assert states[0].stat().st_mode & 0o777 == 0o600
    assert states[0].parent.stat().st_mode & 0o777 == 0o700
    url = json.loads(states[0].read_text())["url"]
    head = httpx.head(url, headers={**server.auth_headers(), "Tus-Resumable": "1.0.0"})
    offset = int(head.headers["upload-offset"])
    assert offset >= 3 * MiB  # what arrived before the interruption is kept
    sent_before = proxy.sent
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env.update({"HOME": str(home), "FHIRVAULT_URL": f"{proxy.url}/fhir/R4",
                **{f"FHIRVAULT_{k.upper()}": v for k, v in credentials(server).items()},
                "FHIRVAULT_TOKEN_URL": f"{server.url}/oauth2/token"})
    done = subprocess.run([sys.executable, "-m", "fhirvault.cli", "upload", str(path), "--resumable", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    binary = json.loads(done.stdout)
    with connect(server, proxy) as client:
        assert client.download(f"Binary/{binary['id']}") == data
    # The second run sent what the server did not have (and a few requests' headers): not the file again.
    assert proxy.sent - sent_before < len(data) - offset + 64 * 1024, (proxy.sent - sent_before, offset)
    assert list((home / ".cache" / "fhirvault" / "uploads").iterdir()) == []


def test_progress_continues_where_it_stopped(proxied: tuple[ServerProcess, CutProxy], tmp_path: Path) -> None:
    server, proxy = proxied
    data = os.urandom(3 * MiB)
    path = tmp_path / "doc.pdf"
    path.write_bytes(data)
    first: list[int] = []

    def stop(done: int, total: int | None) -> None:
        first.append(done)
        if done >= 2 * MiB:
            raise Interrupt

    with connect(server, proxy) as client:
        with pytest.raises(Interrupt):
            client.create_binary(path, resumable=True, state_dir=tmp_path, chunk_size=MiB, on_progress=stop)
        second: list[tuple[int, int | None]] = []
        binary = client.create_binary(path, resumable=True, state_dir=tmp_path, chunk_size=MiB,
                                      on_progress=lambda done, total: second.append((done, total)))
        assert client.download(f"Binary/{binary['id']}") == data
    assert second[0] == (MiB, len(data)) or second[0][0] >= MiB  # starts at the server's offset, not 0
    assert second[-1] == (len(data), len(data))
    assert all(a[0] <= b[0] for a, b in zip(second, second[1:], strict=False))


def test_async_client_resumable(proxied: tuple[ServerProcess, CutProxy], tmp_path: Path) -> None:
    server, proxy = proxied
    data = os.urandom(2 * MiB + 3)
    path = tmp_path / "a.bin"
    path.write_bytes(data)

    async def main() -> tuple[dict[str, Any], bytes | None]:
        async with AsyncFhirClient(f"{proxy.url}/fhir/R4", token_url=f"{server.url}/oauth2/token",
                                   **credentials(server)) as client:
            proxy.cut_after(MiB)
            binary = await client.create_binary(path, resumable=True, state_dir=tmp_path / "s",
                                                security_context=None, chunk_size=512 * 1024)
            return binary, await client.download(f"Binary/{binary['id']}")

    binary, content = asyncio.run(main())
    assert content == data
    assert binary["contentType"] == "application/octet-stream"


def test_resumable_needs_a_path(proxied: tuple[ServerProcess, CutProxy]) -> None:
    server, proxy = proxied
    with connect(server, proxy) as client, pytest.raises(TypeError):
        client.create_binary(b"bytes", resumable=True)


@pytest.fixture(scope="module")
def blocking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, CutProxy]]:
    """A proxied server in SCAN_MODE=block whose scans never run (no job worker): all content stays
    pending, so its bytes are held back (423) for as long as the module runs."""
    with ExitStack() as stack:
        port = free_port()
        proxy = stack.enter_context(cut_proxy(port))
        server = ServerProcess(tmp_path_factory.mktemp("tus-block"), settings_env(
            public_base_url=proxy.url, scan_mode="block", scan_clamd_url="tcp://127.0.0.1:9", job_workers=0),
            port=port).start()
        stack.callback(server.stop)
        yield server, proxy


def test_resumable_returns_the_binary_without_downloading_it_even_while_its_scan_is_pending(
        blocking: tuple[ServerProcess, CutProxy], tmp_path: Path) -> None:
    server, proxy = blocking
    data = os.urandom(6 * MiB)
    path = tmp_path / "report.pdf"
    path.write_bytes(data)
    with server.api() as api:
        patient = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        before = api.get("/Binary", params={"_summary": "count"}).json()["total"]
    received = proxy.received
    with connect(server, proxy) as client:
        binary = client.create_binary(path, resumable=True, state_dir=tmp_path / "state", chunk_size=2 * MiB,
                                      security_context=f"Patient/{patient}")
    # Answers only: not the bytes (6 MiB as 8 MiB of base64) back again.
    assert proxy.received - received < 64 * 1024, proxy.received - received
    assert "data" not in binary
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "application/pdf"
    assert binary["securityContext"] == {"reference": f"Patient/{patient}"}
    assert binary["meta"]["versionId"] == "1" and "lastUpdated" in binary["meta"]
    assert "tag" not in binary["meta"]  # as a plain POST /Binary answers: no SUBSETTED tag
    assert {"url": "urn:fhirvault:binary-filename", "valueString": "report.pdf"} in binary["meta"]["extension"]
    assert list((tmp_path / "state").iterdir()) == []
    with server.api() as api:
        # The bytes are held back while the scan is pending, the description is not.
        assert api.get(f"/Binary/{binary['id']}").status_code == 423
        assert api.get(f"/Binary/{binary['id']}", headers={"Accept": "application/fhir+json"}).status_code == 423
        described = api.get(f"/Binary/{binary['id']}", params={"_elements": "id,meta,contentType"},
                            headers={"Accept": "application/fhir+json"})
        assert described.status_code == 200, described.text
        assert "data" not in described.json()
        assert api.get("/Binary", params={"_summary": "count"}).json()["total"] == before + 1


def test_the_cli_upload_succeeds_while_the_scan_is_pending(blocking: tuple[ServerProcess, CutProxy],
                                                           tmp_path: Path) -> None:
    server, proxy = blocking
    path = tmp_path / "photo.png"
    path.write_bytes(os.urandom(3 * MiB))
    with server.api() as api:
        before = api.get("/Binary", params={"_summary": "count"}).json()["total"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env.update({"HOME": str(tmp_path / "home"), "FHIRVAULT_URL": f"{proxy.url}/fhir/R4",
                **{f"FHIRVAULT_{k.upper()}": v for k, v in credentials(server).items()},
                "FHIRVAULT_TOKEN_URL": f"{server.url}/oauth2/token"})
    done = subprocess.run([sys.executable, "-m", "fhirvault.cli", "upload", str(path), "--resumable", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    binary = json.loads(done.stdout)
    assert binary["contentType"] == "image/png" and "data" not in binary
    with server.api() as api:
        assert api.get("/Binary", params={"_summary": "count"}).json()["total"] == before + 1
        assert api.get(f"/Binary/{binary['id']}").status_code == 423


def test_a_binary_the_client_may_not_read_is_still_returned(proxied: tuple[ServerProcess, CutProxy],
                                                            tmp_path: Path) -> None:
    """A client allowed to create Binaries but not to read them: the read after the upload is refused
    (403), and the upload still answers with the Binary its tus answers described, not an error."""
    server, proxy = proxied
    writer = server.create_client("tus-create-only", "system/Binary.c")
    data = os.urandom(MiB + 7)
    path = tmp_path / "notes.txt"
    path.write_bytes(data)
    with FhirClient(f"{proxy.url}/fhir/R4", token_url=f"{server.url}/oauth2/token",
                    client_id=writer["client_id"], client_secret=writer["client_secret"]) as client:
        binary = client.create_binary(path, resumable=True, state_dir=tmp_path / "state")
    assert binary["resourceType"] == "Binary" and "data" not in binary
    assert binary["contentType"] == "text/plain" and binary["meta"]["versionId"] == "1"
    assert {"url": "urn:fhirvault:binary-filename", "valueString": "notes.txt"} in binary["meta"]["extension"]
    with server.api() as api:
        assert api.get(f"/Binary/{binary['id']}").content == data
    assert list((tmp_path / "state").iterdir()) == []
