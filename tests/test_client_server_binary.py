"""The Python client's binary features and tokens against the real server, seen from the server
side through a recording reverse proxy (the server's PUBLIC_BASE_URL, so signed URLs come back
through it). Each test starts once its server feature has landed (Binary, signed URLs, OAuth2)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fhirvault.client import ClientCredentials, FhirClient, UnauthorizedError
from tests.support.binary import sha1_b64
from tests.support.clients import admin_kwargs, open_client
from tests.support.server import ServerProcess
from tests.support.standin import RecordingProxy
from tests.test_client_cli import fhirvault
from tests.test_client_memory import BIG, HEADROOM, run_client

PAYLOAD = bytes(range(256)) * 2000 + b"end"


@pytest.fixture(scope="module")
def proxied(server_factory: Callable[..., ServerProcess]) -> Iterator[tuple[ServerProcess, RecordingProxy]]:
    proxy = RecordingProxy()
    server = server_factory("sqlite", public_base_url=proxy.url, token_lifetime=3600)
    proxy.start(server.url)
    yield server, proxy
    proxy.stop()


@pytest.fixture
def base(proxied: tuple[ServerProcess, RecordingProxy]) -> str:
    return f"{proxied[1].url}/fhir/R4"


def test_resources_through_the_proxy(proxied: tuple[ServerProcess, RecordingProxy], base: str) -> None:
    server, proxy = proxied
    with FhirClient(base, **admin_kwargs(server)) as fhir:
        patient = fhir.create_resource({"resourceType": "Patient"})
        assert fhir.read_resource("Patient", patient["id"])["id"] == patient["id"]
    assert proxy.state.requests_to(f"/fhir/R4/Patient/{patient['id']}")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_binary_round_trip_on_the_server(proxied: tuple[ServerProcess, RecordingProxy], base: str,
                                         flavour: str, tmp_path: Path) -> None:
    server, _ = proxied
    with open_client(flavour, base, **admin_kwargs(server)) as fhir:
        source = tmp_path / "noise.bin"
        source.write_bytes(PAYLOAD)
        binary = fhir.create_binary(source)
        assert binary["resourceType"] == "Binary" and binary["contentType"] == "application/octet-stream"
        assert fhir.download(f"Binary/{binary['id']}") == PAYLOAD
        attachment = fhir.create_attachment("hello from python", content_type="text/plain", filename="hello.txt")
        assert attachment["size"] == 17 and attachment["hash"] == sha1_b64(b"hello from python")
        media = fhir.create_media(PAYLOAD, content_type="image/png")
        doc = fhir.create_document_reference(PAYLOAD, filename="d.pdf")
        for att in (media["content"], doc["content"][0]["attachment"]):
            assert fhir.download(att) == PAYLOAD
        assert fhir.download(attachment, byte_range=(6, 10)) == b"from"


def test_200_mib_upload_and_download_on_the_server(proxied: tuple[ServerProcess, RecordingProxy],
                                                   tmp_path: Path) -> None:
    server, _ = proxied
    out = tmp_path / "big.bin"
    result = run_client(server.base, out, admin_kwargs(server))
    assert result["attachment"]["size"] == BIG and out.stat().st_size == BIG
    assert result["after_upload"] - result["baseline"] < HEADROOM
    assert result["after_download"] - result["baseline"] < HEADROOM


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_signed_url_download_sends_no_authorization(proxied: tuple[ServerProcess, RecordingProxy], base: str,
                                                    flavour: str) -> None:
    server, proxy = proxied
    with open_client(flavour, base, **admin_kwargs(server)) as fhir:
        attachment = fhir.create_attachment(PAYLOAD, content_type="application/octet-stream")
        comm = fhir.create_resource({"resourceType": "Communication", "status": "completed",
                                     "payload": [{"contentAttachment": attachment}]})
        signed = fhir.read_resource("Communication", comm["id"])["payload"][0]["contentAttachment"]
        assert "/storage/" in signed["url"]
        assert fhir.download(signed) == PAYLOAD
    storage = proxy.state.requests_to("/storage/")
    assert storage and "authorization" not in storage[-1].headers
    if admin_kwargs(server):
        assert proxy.state.requests_to(f"/fhir/R4/Communication/{comm['id']}")[-1].headers["authorization"]


def test_token_is_renewed_before_expiry_on_the_server(proxied: tuple[ServerProcess, RecordingProxy],
                                                      base: str) -> None:
    server, proxy = proxied
    now = [0.0]
    creds = ClientCredentials(**admin_kwargs(server), clock=lambda: now[0])
    with FhirClient(base, credentials=creds) as fhir:
        patient = fhir.create_resource({"resourceType": "Patient"})
        now[0] += 3600            # the client's clock says the token has lapsed
        fhir.read_resource("Patient", patient["id"])
    sent = [r.headers["authorization"] for r in proxy.state.requests_to("/fhir/R4/Patient")[-2:]]
    assert creds.fetch_count == 2 and sent[0] != sent[1]


def test_token_renewed_after_real_expiry(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", token_lifetime=1)
    with FhirClient(server.base, **admin_kwargs(server)) as fhir:
        patient = fhir.create_resource({"resourceType": "Patient"})
        assert isinstance(fhir.credentials, ClientCredentials)
        first = fhir.credentials.current() or ""
        # Wait until the server itself refuses the first token (a condition, not a timing).
        while httpx.get(f"{server.base}/Patient/{patient['id']}",
                        headers={"Authorization": f"Bearer {first}"}).status_code != 401:
            time.sleep(0.2)
        assert fhir.read_resource("Patient", patient["id"])["id"] == patient["id"]
        assert fhir.credentials.fetch_count >= 2


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_401_from_the_server_raises_unauthorized(base: str, flavour: str) -> None:
    with open_client(flavour, base, token="not-a-token") as fhir, pytest.raises(UnauthorizedError) as err:
        fhir.read_resource("Patient", "x")
    assert err.value.status == 401 and str(err.value) == err.value.outcome["issue"][0]["diagnostics"]


def test_cli_upload_attach_and_download_on_the_server(proxied: tuple[ServerProcess, RecordingProxy], base: str,
                                                      tmp_path: Path) -> None:
    server, _ = proxied
    env = {"FHIRVAULT_URL": base}
    creds = admin_kwargs(server)
    if creds:
        env.update({"FHIRVAULT_CLIENT_ID": creds["client_id"], "FHIRVAULT_CLIENT_SECRET": creds["client_secret"]})
    with FhirClient(base, **creds) as fhir:
        patient = fhir.create_resource({"resourceType": "Patient"})
    src = tmp_path / "face.png"
    src.write_bytes(PAYLOAD)
    up = fhirvault("upload", str(src), "--attach-to", f"Patient/{patient['id']}", "--element", "photo", "--json",
                   env=env)
    assert up.returncode == 0, up.stderr
    binary = json.loads(up.stdout)
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "image/png"
    out = tmp_path / "back.png"
    down = fhirvault("download", f"Binary/{binary['id']}", "-o", str(out), env=env)
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == PAYLOAD
    with FhirClient(base, **creds) as fhir:
        photo = fhir.read_resource("Patient", patient["id"])["photo"][0]
        assert photo["size"] == len(PAYLOAD) and photo["hash"] == sha1_b64(PAYLOAD)
        assert fhir.download(photo) == PAYLOAD


def advertises_operation(server: ServerProcess, code: str) -> bool:
    with server.api() as api:
        cap = api.get("/metadata").json()
    for rest in cap.get("rest", []):
        ops = list(rest.get("operation", []))
        for resource in rest.get("resource", []):
            ops += resource.get("operation", [])
        if any(op.get("name") == code for op in ops):
            return True
    return False


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_binary_access_write_and_read_on_the_server(proxied: tuple[ServerProcess, RecordingProxy], base: str,
                                                    flavour: str) -> None:
    server, _ = proxied
    assert advertises_operation(server, "binary-access-write")
    with open_client(flavour, base, **admin_kwargs(server)) as fhir:
        doc = fhir.create_resource({"resourceType": "DocumentReference", "status": "current", "content": [
            {"attachment": {"contentType": "text/plain", "data": base64.b64encode(b"first").decode()}},
            {"attachment": {"contentType": "application/pdf", "title": "kept"}}]})
        path = "DocumentReference.content[1].attachment"
        updated = fhir.binary_access_write(f"DocumentReference/{doc['id']}", path, iter([PAYLOAD]),
                                           "application/pdf")
        assert updated["meta"]["versionId"] == "2"
        written = updated["content"][1]["attachment"]
        assert written["title"] == "kept" and written["size"] == len(PAYLOAD) and written["hash"] == sha1_b64(PAYLOAD)
        assert fhir.binary_access_read(f"DocumentReference/{doc['id']}", path) == PAYLOAD
        assert fhir.binary_access_read(f"DocumentReference/{doc['id']}",
                                       "DocumentReference.content[0].attachment") == b"first"
