"""tus 1.0 resumable uploads at Binary/$upload, through tuspy (PyPI) and raw HTTP against real servers."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from tusclient import client as tus

from tests.conftest import require_postgres
from tests.support.cut_proxy import CutProxy, cut_proxy
from tests.support.server import ServerProcess, free_port, postgres_database, settings_env

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory, stack: ExitStack) -> Callable[..., ServerProcess]:
    """Starts a server (stopped at the module's end); `data_dir` shares one with another node."""

    def start(data_dir: Path | None = None, port: int | None = None, backend: str = "sqlite",
              **settings: Any) -> ServerProcess:
        if backend == "postgres" and "database_url" not in settings:
            require_postgres()
            settings["database_url"] = stack.enter_context(postgres_database())
        server = ServerProcess(data_dir or tmp_path_factory.mktemp("tus"), settings_env(**settings), port=port)
        server.start()
        stack.callback(server.stop)
        return server

    return start


@pytest.fixture(scope="module")
def fs_server(start: Callable[..., ServerProcess]) -> ServerProcess:
    return start()


def tus_client(server: ServerProcess, base: str | None = None, headers: dict[str, str] | None = None) -> tus.TusClient:
    return tus.TusClient(f"{base or server.base}/Binary/$upload", headers=headers or server.auth_headers())


def write_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def binary_of(server: ServerProcess, upload_url: str) -> tuple[str, bytes, dict[str, Any]]:
    """The Binary a finished upload made (by HEAD's X-Binary-Id): id, bytes, resource."""
    head = httpx.head(upload_url, headers={**server.auth_headers(), **TUS})
    assert head.status_code == 200, head.text
    assert head.headers["upload-offset"] == head.headers["upload-length"]
    binary_id = head.headers["x-binary-id"]
    assert head.headers["content-location"].endswith(f"/Binary/{binary_id}/_history/1")
    with server.api() as api:
        raw = api.get(f"/Binary/{binary_id}")
        assert raw.status_code == 200
        resource = api.get(f"/Binary/{binary_id}", headers={"Accept": "application/fhir+json"}).json()
    return binary_id, raw.content, resource


def staged_files(server: ServerProcess) -> list[Path]:
    return [p for p in (server.data_dir / "blobs").rglob(".*.upload.tmp")]


def create(server: ServerProcess, length: int, metadata: str = "", headers: dict[str, str] | None = None,
           body: bytes = b"") -> httpx.Response:
    extra = {"Upload-Metadata": metadata} if metadata else {}
    if body:
        extra["Content-Type"] = "application/offset+octet-stream"
    return httpx.post(f"{server.base}/Binary/$upload", content=body,
                      headers={**(headers or server.auth_headers()), **TUS, "Upload-Length": str(length), **extra})


def patch(server: ServerProcess, url: str, offset: int, body: bytes, **headers: str) -> httpx.Response:
    # A PATCH that completes an upload answers after the Binary is committed (hashed, fsynced); on a loaded
    # machine that can take longer than httpx's default 5 s, which is no limit of the protocol.
    return httpx.patch(url, content=body, headers={**server.auth_headers(), **OCTETS,
                                                   "Upload-Offset": str(offset), **headers}, timeout=60)


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in values.items())


# -- discovery and the whole protocol with tuspy ---------------------------------------------------

def test_options_discovery_needs_no_token(fs_server: ServerProcess) -> None:
    r = httpx.options(f"{fs_server.base}/Binary/$upload")
    assert r.status_code == 204
    assert r.headers["tus-resumable"] == "1.0.0"
    assert r.headers["tus-version"] == "1.0.0"
    assert set(r.headers["tus-extension"].split(",")) == {
        "creation", "creation-with-upload", "expiration", "checksum", "termination"}
    assert int(r.headers["tus-max-size"]) == 8 * 1024**3
    assert set(r.headers["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256"}
    # The CapabilityStatement says where resumable uploads go.
    statement = httpx.get(f"{fs_server.base}/metadata").json()
    (binary,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Binary"]
    assert f"{fs_server.base}/Binary/$upload" in binary["documentation"]


@pytest.mark.parametrize("mode", ["filesystem", "database", "inline"])
def test_tuspy_upload_makes_the_binary_a_raw_post_makes(start: Callable[..., ServerProcess], tmp_path: Path,
                                                        mode: str) -> None:
    server = start(storage_mode=mode)
    data = write_file(tmp_path / "scan.bin", 5 * MiB + 12345)
    uploader = tus_client(server).uploader(str(tmp_path / "scan.bin"), chunk_size=2 * MiB, upload_checksum=True,
                                           metadata={"contentType": "image/png", "filename": "scan.png"})
    uploader.upload()
    binary_id, content, resource = binary_of(server, uploader.url)
    assert content == data
    assert resource["contentType"] == "image/png"
    assert resource["meta"]["versionId"] == "1"
    # The same content posted raw: the same size and hashes in the Attachment the server fills in.
    with server.api() as api:
        raw = api.post("/Binary", content=data, headers={"Content-Type": "image/png"})
        assert raw.status_code == 201
        doc = {"resourceType": "DocumentReference", "status": "current", "content": [
            {"attachment": {"url": f"Binary/{binary_id}"}}, {"attachment": {"url": f"Binary/{raw.json()['id']}"}}]}
        made = api.post("/DocumentReference", json=doc).json()
        tus_att, raw_att = (c["attachment"] for c in made["content"])
        assert tus_att["size"] == raw_att["size"] == len(data)
        assert tus_att["hash"] == raw_att["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
        history = api.get(f"/Binary/{binary_id}/_history").json()
        assert history["total"] == 1
    assert staged_files(server) == []


def test_small_upload_in_the_creation_request_stays_inline(fs_server: ServerProcess) -> None:
    data = b"hello tus" * 100
    r = create(fs_server, len(data), meta(contentType="text/plain", filename="../../etc/hi.txt"), body=data)
    assert r.status_code == 201, r.text
    assert r.headers["upload-offset"] == str(len(data))
    assert r.headers["location"].startswith(f"{fs_server.base}/Binary/$upload/")
    assert "upload-expires" in r.headers
    link = r.headers["link"]
    assert link.startswith(f"<{fs_server.url}/storage/{r.headers['x-binary-id']}/1?")
    signed = httpx.get(link[1:link.index(">")])
    assert signed.content == data
    with fs_server.api() as api:
        resource = api.get(f"/Binary/{r.headers['x-binary-id']}", headers={"Accept": "application/fhir+json"}).json()
    assert base64.b64decode(resource["data"]) == data  # at most INLINE_MAX_BYTES: inline, as a raw POST keeps it
    assert resource["meta"]["extension"][0]["valueString"] == "hi.txt"


def test_empty_upload_is_an_empty_binary(fs_server: ServerProcess) -> None:
    r = create(fs_server, 0, meta(contentType="text/plain"))
    assert r.status_code == 201, r.text
    binary_id, content, resource = binary_of(fs_server, r.headers["location"])
    # The answer names the Binary it made, as the last PATCH of any other upload does.
    assert r.headers["x-binary-id"] == binary_id
    assert r.headers["content-location"] == f"{fs_server.base}/Binary/{binary_id}/_history/1"
    assert r.headers["upload-offset"] == "0"
    assert content == b""
    assert resource["contentType"] == "text/plain"


# -- checksums, protocol errors ----------------------------------------------------------------------

def test_checksum_mismatch_is_460_and_keeps_nothing(fs_server: ServerProcess) -> None:
    data = os.urandom(3 * MiB)
    url = create(fs_server, len(data), meta(contentType="application/pdf")).headers["location"]
    half = data[:MiB]
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    r = patch(fs_server, url, 0, half, **{"Upload-Checksum": f"sha256 {wrong}"})
    assert r.status_code == 460, r.text
    assert r.headers["tus-resumable"] == "1.0.0"
    assert r.json()["resourceType"] == "OperationOutcome"
    head = httpx.head(url, headers={**fs_server.auth_headers(), **TUS})
    assert head.headers["upload-offset"] == "0"
    # Nothing of those bytes is staged: the file the next append goes to is empty (or not there).
    assert all(p.stat().st_size == 0 for p in staged_files(fs_server))
    for algorithm, offset, piece in (("sha1", 0, data[:2 * MiB]), ("sha256", 2 * MiB, data[2 * MiB:])):
        digest = base64.b64encode(hashlib.new(algorithm, piece).digest()).decode()
        r = patch(fs_server, url, offset, piece, **{"Upload-Checksum": f"{algorithm} {digest}"})
        assert r.status_code == 204, r.text
    assert binary_of(fs_server, url)[1] == data


@pytest.mark.parametrize(("headers", "status", "says"), [
    ({"Tus-Resumable": "0.2.2"}, 412, "Tus-Resumable"),
    ({"Content-Type": "application/octet-stream"}, 415, "application/offset+octet-stream"),
    ({"Upload-Offset": "5"}, 409, "offset"),
    ({"Upload-Offset": "-1"}, 400, "Upload-Offset"),
    ({"Upload-Checksum": "md5 AAAA"}, 400, "md5"),
    ({"Upload-Checksum": "sha1 !!!"}, 400, "base64"),
])
def test_patch_refusals(fs_server: ServerProcess, headers: dict[str, str], status: int, says: str) -> None:
    url = create(fs_server, 10).headers["location"]
    r = httpx.patch(url, content=b"0123456789",
                    headers={**fs_server.auth_headers(), **OCTETS, "Upload-Offset": "0", **headers})
    assert r.status_code == status, r.text
    assert says.lower() in r.json()["issue"][0]["diagnostics"].lower()
    if status == 412:
        assert r.headers["tus-version"] == "1.0.0"
    assert httpx.head(url, headers={**fs_server.auth_headers(), **TUS}).headers["upload-offset"] == "0"


def test_creation_refusals(fs_server: ServerProcess) -> None:
    h = fs_server.auth_headers()
    url = f"{fs_server.base}/Binary/$upload"
    cases = [
        ({**TUS, "Upload-Defer-Length": "1"}, 400, "Upload-Defer-Length"),
        ({**TUS}, 400, "Upload-Length"),
        ({**TUS, "Upload-Length": str(9 * 1024**3)}, 413, "MAX_BINARY_BYTES"),
        ({**TUS, "Upload-Length": "5", "Upload-Metadata": "contentType not-base64!"}, 400, "base64"),
        ({**TUS, "Upload-Length": "5", "Upload-Metadata": meta(contentType="no type")}, 400, "media type"),
        ({**TUS, "Upload-Length": "5", "Upload-Metadata": meta(securityContext="nonsense")}, 400, "reference"),
        ({**TUS, "Upload-Length": "5", "Upload-Concat": "partial"}, 400, "Upload-Concat"),
        ({"Upload-Length": "5"}, 412, "Tus-Resumable"),
    ]
    for headers, status, says in cases:
        r = httpx.post(url, headers={**h, **headers})
        assert r.status_code == status, (headers, r.text)
        assert says.lower() in r.json()["issue"][0]["diagnostics"].lower(), r.text
    # A securityContext naming no R4 resource type is refused at creation, as X-Security-Context is on a
    # raw POST /Binary: 400, and no upload made whose last PATCH would then fail.
    before = set(staged_files(fs_server))
    for context in ("Foo/abc", "patient/abc"):
        r = httpx.post(url, headers={**h, **TUS, "Upload-Length": "5",
                                     "Upload-Metadata": meta(securityContext=context)})
        assert r.status_code == 400, r.text
        assert "location" not in r.headers
        assert context in r.json()["issue"][0]["diagnostics"], r.text
        raw = httpx.post(f"{fs_server.base}/Binary", content=b"hello",
                         headers={**h, "Content-Type": "text/plain", "X-Security-Context": context})
        assert raw.status_code == 400, raw.text
        assert r.json()["issue"][0]["diagnostics"].replace("securityContext", "X-Security-Context") == \
            raw.json()["issue"][0]["diagnostics"]
    assert set(staged_files(fs_server)) == before
    # A body past the Upload-Length is refused and nothing is kept.
    loc = create(fs_server, 4).headers["location"]
    r = patch(fs_server, loc, 0, b"too long")
    assert r.status_code == 400
    assert httpx.head(loc, headers={**h, **TUS}).headers["upload-offset"] == "0"


def binary_count(server: ServerProcess) -> int:
    with server.api() as api:
        total: int = api.get("/Binary", params={"_summary": "count"}).json()["total"]
    return total


@pytest.mark.parametrize("chunked", [False, True])
def test_a_creation_body_past_the_upload_length_creates_nothing(fs_server: ServerProcess, chunked: bool) -> None:
    """Creation With Upload whose body overflows Upload-Length: 400, no Location, no upload, no bytes kept,
    whether the overflow is seen from Content-Length or only while a chunked body arrives."""
    before_files, before_binaries = set(staged_files(fs_server)), binary_count(fs_server)
    body = os.urandom(2 * MiB)

    def pieces() -> Iterator[bytes]:
        yield body[:MiB]
        yield body[MiB:]

    r = httpx.post(f"{fs_server.base}/Binary/$upload", content=pieces() if chunked else body,
                   headers={**fs_server.auth_headers(), **OCTETS, "Upload-Length": str(MiB + 10)})
    assert r.status_code == 400, r.text
    assert "Upload-Length" in r.json()["issue"][0]["diagnostics"]
    assert "location" not in r.headers
    assert set(staged_files(fs_server)) == before_files
    assert binary_count(fs_server) == before_binaries


@pytest.mark.parametrize(("method", "name", "values"), [
    ("POST", "Upload-Length", ("5", "6")),
    ("POST", "Upload-Length", ("5", "5")),
    ("POST", "Upload-Metadata", ("contentType dGV4dC9wbGFpbg==", "filename YS50eHQ=")),
    ("POST", "Tus-Resumable", ("1.0.0", "1.0.0")),
    ("PATCH", "Upload-Offset", ("0", "3")),
    ("PATCH", "Upload-Checksum", ("sha1 " + base64.b64encode(hashlib.sha1(b"abcde").digest()).decode(),) * 2),
    ("PATCH", "Tus-Resumable", ("1.0.0", "1.0.0")),
    ("HEAD", "Tus-Resumable", ("1.0.0", "1.0.0")),
    ("DELETE", "Tus-Resumable", ("1.0.0", "1.0.0")),
])
def test_a_repeated_tus_header_is_refused(fs_server: ServerProcess, method: str, name: str,
                                         values: tuple[str, ...]) -> None:
    url = create(fs_server, 5).headers["location"]
    before_files = set(staged_files(fs_server))
    base = {"POST": {**TUS, "Upload-Length": "5"}, "PATCH": {**OCTETS, "Upload-Offset": "0"}}.get(method, TUS)
    headers = [(k, v) for k, v in {**fs_server.auth_headers(), **base}.items() if k.lower() != name.lower()]
    headers += [(name, value) for value in values]
    target = f"{fs_server.base}/Binary/$upload" if method == "POST" else url
    r = httpx.request(method, target, headers=headers, content=b"abcde" if method == "PATCH" else None)
    assert r.status_code == 400, r.text
    assert "location" not in r.headers
    if method != "HEAD":
        assert name in r.json()["issue"][0]["diagnostics"]
    # Nothing changed: the upload is where it was, and no other was made.
    head = httpx.head(url, headers={**fs_server.auth_headers(), **TUS})
    assert head.status_code == 200 and head.headers["upload-offset"] == "0"
    assert set(staged_files(fs_server)) == before_files


def test_termination_removes_the_bytes(fs_server: ServerProcess) -> None:
    data = os.urandom(MiB)
    url = create(fs_server, 2 * MiB).headers["location"]
    assert patch(fs_server, url, 0, data).status_code == 204
    upload_id = url.rsplit("/", 1)[1]
    assert len(staged_files(fs_server)) >= 1
    before = set(staged_files(fs_server))
    r = httpx.delete(url, headers={**fs_server.auth_headers(), **TUS})
    assert r.status_code == 204
    assert httpx.head(url, headers={**fs_server.auth_headers(), **TUS}).status_code == 404
    assert patch(fs_server, url, MiB, data).status_code == 404
    assert len(set(staged_files(fs_server)) - before) == 0 and len(staged_files(fs_server)) == len(before) - 1, \
        upload_id


# -- auth -----------------------------------------------------------------------------------------

def test_tokens_scopes_and_owners(fs_server: ServerProcess) -> None:
    url = f"{fs_server.base}/Binary/$upload"
    assert httpx.post(url, headers={**TUS, "Upload-Length": "3"}).status_code == 401
    reader = fs_server.create_client("tus-reader", "system/Binary.rs system/Patient.rs")
    reader_h = {"Authorization": f"Bearer {fs_server.token(reader['client_id'], reader['client_secret'])}"}
    r = create(fs_server, 3, headers=reader_h)
    assert r.status_code == 403 and "create" in r.text
    # Create rights on Binary, but not update rights on the securityContext's Patient.
    writer = fs_server.create_client("tus-writer", "system/Binary.cruds system/Patient.rs")
    writer_h = {"Authorization": f"Bearer {fs_server.token(writer['client_id'], writer['client_secret'])}"}
    with fs_server.api() as api:
        patient = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    r = create(fs_server, 3, meta(securityContext=f"Patient/{patient}"), headers=writer_h)
    assert r.status_code == 403, r.text
    # Another client's upload is not reachable at all.
    mine = create(fs_server, 6).headers["location"]
    for method in ("HEAD", "PATCH", "DELETE"):
        other = httpx.request(method, mine, content=b"abc" if method == "PATCH" else None,
                              headers={**writer_h, **OCTETS, "Upload-Offset": "0"})
        assert other.status_code == 404, (method, other.text)
    assert httpx.patch(mine, content=b"abc", headers={**OCTETS, "Upload-Offset": "0"}).status_code == 401
    assert patch(fs_server, mine, 0, b"abcdef").status_code == 204
    # The owner with a token lacking Binary create scope cannot go on either.
    assert httpx.head(mine, headers={**reader_h, **TUS}).status_code in (403, 404)
    # With update rights on the Patient, the Binary is bound to it.
    r = create(fs_server, 3, meta(securityContext=f"Patient/{patient}", contentType="text/plain"), body=b"abc")
    assert r.status_code == 201, r.text
    with fs_server.api() as api:
        binary = api.get(f"/Binary/{r.headers['x-binary-id']}", headers={"Accept": "application/fhir+json"}).json()
    assert binary["securityContext"] == {"reference": f"Patient/{patient}"}


# -- cut connections, restarts, two nodes, expiry ---------------------------------------------------

def proxied_server(start: Callable[..., ServerProcess], stack: ExitStack, **settings: Any) -> tuple[ServerProcess,
                                                                                                     CutProxy]:
    """A server whose public base URL is a cutting proxy in front of it, so upload URLs go through it."""
    port = free_port()
    proxy = stack.enter_context(cut_proxy(port))
    server = start(port=port, public_base_url=proxy.url, **settings)
    return server, proxy


@pytest.mark.parametrize("mode", ["filesystem", "database", "s3"])
def test_tuspy_resumes_after_a_cut_connection(start: Callable[..., ServerProcess], stack: ExitStack,
                                              tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> None:
    settings = request.getfixturevalue("s3_settings") if mode == "s3" else {"storage_mode": mode}
    server, proxy = proxied_server(start, stack, **settings)
    size = 12 * MiB
    data = write_file(tmp_path / "video.bin", size)
    proxy.cut_after(int(size * 0.9))
    uploader = tus_client(server, base=f"{proxy.url}/fhir/R4").uploader(
        str(tmp_path / "video.bin"), retries=3, retry_delay=0, metadata={"contentType": "video/mp4"})
    uploader.upload()
    assert proxy.cuts == 1
    assert binary_of(server, uploader.url)[1] == data
    # Only what the server had not stored was sent again: far less than the whole file.
    assert proxy.sent < size * 1.15, proxy.sent


def test_offsets_survive_a_restart(start: Callable[..., ServerProcess], tmp_path: Path) -> None:
    port = free_port()
    server = start(port=port)
    data = os.urandom(6 * MiB)
    url = create(server, len(data), meta(contentType="audio/wav")).headers["location"]
    assert patch(server, url, 0, data[:4 * MiB]).status_code == 204
    server.stop()
    server.start()
    head = httpx.head(url, headers={**server.auth_headers(), **TUS})
    assert head.headers["upload-offset"] == str(4 * MiB)
    r = patch(server, url, 4 * MiB, data[4 * MiB:])
    assert r.status_code == 204, r.text
    assert binary_of(server, url)[1] == data  # hashes read back: this process never saw the first bytes


def test_two_nodes_share_an_upload(start: Callable[..., ServerProcess], tmp_path: Path) -> None:
    first = start()
    second = start(data_dir=first.data_dir)
    data = os.urandom(5 * MiB + 7)
    url = create(first, len(data), meta(contentType="image/jpeg")).headers["location"]
    assert patch(first, url, 0, data[:3 * MiB]).status_code == 204
    on_second = url.replace(first.url, second.url)
    assert httpx.head(on_second, headers={**second.auth_headers(), **TUS}).headers["upload-offset"] == str(3 * MiB)
    r = patch(second, on_second, 3 * MiB, data[3 * MiB:])
    assert r.status_code == 204, r.text
    assert binary_of(second, on_second)[1] == data
    assert binary_of(first, url)[1] == data


def test_unfinished_uploads_expire_and_their_bytes_are_swept(start: Callable[..., ServerProcess]) -> None:
    server = start(upload_expiry_seconds=2, pending_blob_grace_seconds=4)
    url = create(server, 2 * MiB).headers["location"]
    assert patch(server, url, 0, os.urandom(MiB)).status_code == 204
    assert len(staged_files(server)) == 1
    assert "upload-expires" in httpx.head(url, headers={**server.auth_headers(), **TUS}).headers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and staged_files(server):
        time.sleep(0.25)
    assert staged_files(server) == []
    assert httpx.head(url, headers={**server.auth_headers(), **TUS}).status_code in (404, 410)
    assert patch(server, url, MiB, b"x").status_code in (404, 410)


# -- s3 and PostgreSQL ------------------------------------------------------------------------------

def test_s3_parts_tails_and_two_nodes_on_postgres(start: Callable[..., ServerProcess], s3_settings: dict[str, Any],
                                                  stack: ExitStack, tmp_path: Path) -> None:
    require_postgres()
    database_url = stack.enter_context(postgres_database())
    first = start(database_url=database_url, **s3_settings)
    second = start(data_dir=first.data_dir, database_url=database_url, **s3_settings)
    data = os.urandom(13 * MiB + 99)
    url = create(first, len(data), meta(contentType="video/mp4")).headers["location"]
    on_second = url.replace(first.url, second.url)
    # Small PATCHes (tails kept in the store), a part-sized one, then the rest on the other node.
    pieces = [(first, url, 0, MiB), (second, on_second, MiB, 3 * MiB), (first, url, 3 * MiB, 9 * MiB),
              (second, on_second, 9 * MiB, len(data))]
    for server, target, begin, end in pieces:
        r = patch(server, target, begin, data[begin:end])
        assert r.status_code == 204, r.text
        assert r.headers["upload-offset"] == str(end)
    assert binary_of(second, on_second)[1] == data
    # A checksum mismatch in s3 mode keeps the earlier tail intact too.
    url = create(first, 7 * MiB).headers["location"]
    part = os.urandom(7 * MiB)
    assert patch(first, url, 0, part[:MiB]).status_code == 204
    bad = base64.b64encode(hashlib.sha1(b"no").digest()).decode()
    assert patch(first, url, MiB, part[MiB:], **{"Upload-Checksum": f"sha1 {bad}"}).status_code == 460
    assert patch(first, url, MiB, part[MiB:]).status_code == 204
    assert binary_of(first, url)[1] == part


# -- hostile inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_odd_upload_ids_name_nothing(start: Callable[..., ServerProcess], backend: str) -> None:
    server = start(backend=backend)
    h = {**server.auth_headers(), **TUS}
    for odd in ("%00", "abc", "..%2F..%2Fetc", "A" * 32, "0" * 300, "%C3%A9" * 16):
        url = f"{server.base}/Binary/$upload/{odd}"
        assert httpx.head(url, headers=h).status_code == 404, odd
        r = httpx.patch(url, content=b"x", headers={**h, **OCTETS, "Upload-Offset": "0"})
        assert r.status_code == 404, (odd, r.text)
        assert httpx.delete(url, headers=h).status_code == 404, odd
    # Long metadata values are kept (PostgreSQL too), a file name reduced to its last part.
    long_name = "x" * 1000 + ".bin"
    r = create(server, 3, meta(filename="/a/b/" + long_name, securityContext=""), body=b"abc")
    assert r.status_code == 201, r.text
    _, content, resource = binary_of(server, r.headers["location"])
    assert content == b"abc" and resource["meta"]["extension"][0]["valueString"] == long_name


def test_patient_context_clients(fs_server: ServerProcess) -> None:
    with fs_server.api() as api:
        patient = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    client = fs_server.create_client("tus-patient", "patient/Binary.cru patient/Patient.ru", f"Patient/{patient}")
    h = {"Authorization": f"Bearer {fs_server.token(client['client_id'], client['client_secret'])}"}
    # Refused before any byte is sent: a Binary outside the patient's compartment.
    assert create(fs_server, 3, headers=h).status_code == 403
    r = create(fs_server, 3, meta(securityContext=f"Patient/{patient}"), headers=h, body=b"abc")
    assert r.status_code == 201, r.text
    assert "x-binary-id" in r.headers


def test_concurrent_patches_to_one_upload(fs_server: ServerProcess) -> None:
    import concurrent.futures

    data = os.urandom(4 * MiB)
    url = create(fs_server, len(data)).headers["location"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: patch(fs_server, url, 0, data), range(4)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(204) == 1, statuses
    assert set(statuses) <= {204, 409, 423}, statuses
    assert binary_of(fs_server, url)[1] == data


@pytest.mark.parametrize("header", [{"Upload-Complete": "?0"}, {"Upload-Incomplete": "?1"}])
def test_a_partial_upload_of_the_ietf_draft_makes_no_binary(fs_server: ServerProcess, header: dict[str, str]) -> None:
    with fs_server.api() as api:
        before = api.get("/Binary", params={"_summary": "count"}).json()["total"]
        r = api.post("/Binary", content=b"part of a file", headers={"Content-Type": "text/plain", **header})
        assert r.status_code == 400 and "Binary/$upload" in r.text
        assert api.get("/Binary", params={"_summary": "count"}).json()["total"] == before
        # A request that says it is complete is a plain upload.
        done = api.post("/Binary", content=b"all of it",
                        headers={"Content-Type": "text/plain", "Upload-Complete": "?1"})
        assert done.status_code == 201


def test_identical_tus_uploads_share_their_bytes(fs_server: ServerProcess) -> None:
    """The tus commit goes through the raw-create commit path, so deduplication applies to it as well."""
    def stored_files() -> set[Path]:
        return {p for p in (fs_server.data_dir / "blobs").rglob("*") if p.is_file() and not p.name.startswith(".")}

    data = os.urandom(MiB + 1)
    before = stored_files()
    urls = []
    for _ in range(2):
        url = create(fs_server, len(data), meta(contentType="application/pdf")).headers["location"]
        assert patch(fs_server, url, 0, data).status_code == 204
        urls.append(url)
    ids = [binary_of(fs_server, url)[0] for url in urls]
    assert ids[0] != ids[1] and all(binary_of(fs_server, url)[1] == data for url in urls)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(stored_files() - before) != 1:
        time.sleep(0.2)
    assert len(stored_files() - before) == 1
