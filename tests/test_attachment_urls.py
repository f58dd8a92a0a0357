"""Attachment URLs over real HTTP: normalized to Binary/{id} on write, signed on every read path, and the
/storage route that serves signed URLs (tampering, expiry, versions, windows, several nodes)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.conftest import require_postgres
from tests.support.binary import sha1_b64, signed_url_of, wait_until
from tests.support.s3 import SeaweedS3, unique_bucket
from tests.support.server import FhirApi, ServerProcess, postgres_database, settings_env

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LARGE = bytes((i * 7919) % 251 for i in range(200_000))  # above INLINE_MAX_BYTES: a blob


def upload(api: FhirApi, data: bytes = PNG_BYTES, content_type: str = "image/png", **headers: str) -> dict[str, Any]:
    """The created Binary, with the signed URL of its Link header under "signed"."""
    r = api.post("/Binary", content=data, headers={"Content-Type": content_type, **headers})
    assert r.status_code == 201, r.text
    return {**r.json(), "signed": signed_url_of(r)}


def create(api: FhirApi, resource: dict[str, Any]) -> httpx.Response:
    return api.post(f"/{resource['resourceType']}", json=resource)


def doc_ref(*urls: str) -> dict[str, Any]:
    return {"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"url": u}} for u in urls]}


def storage_path(url: str) -> str:
    return urlsplit(url).path


def is_signed_for(url: str, server: ServerProcess, binary_id: str, version: int) -> bool:
    split = urlsplit(url)
    q = parse_qs(split.query)
    return (url.startswith(f"{server.url}/storage/") and split.path == f"/storage/{binary_id}/{version}"
            and {"exp", "kid", "sig"} <= set(q))


def replace_query(url: str, **changes: str) -> str:
    split = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(split.query).items()}
    q.update(changes)
    return f"{split.scheme}://{split.netloc}{split.path}?{urlencode(q)}"


@pytest.fixture(scope="module")
def plain_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """Rewriting switched off: reads show what is stored."""
    return server_factory("sqlite", rewrite_attachment_urls=False)


@pytest.fixture
def plain(plain_server: ServerProcess) -> Iterator[FhirApi]:
    with plain_server.api() as client:
        yield client


# -- write-time normalization --------------------------------------------------------------------
def test_every_url_shape_is_normalized_and_filled(plain_server: ServerProcess, plain: FhirApi) -> None:
    binary = upload(plain)
    bid = binary["id"]
    signed = binary["signed"]
    assert is_signed_for(signed, plain_server, bid, 1)
    shapes = [f"Binary/{bid}", f"Binary/{bid}/_history/1", f"{plain.base}/Binary/{bid}", signed]
    r = create(plain, doc_ref(*shapes))
    assert r.status_code == 201, r.text
    stored = plain.get(f"/DocumentReference/{r.json()['id']}").json()
    # A url naming the version keeps it; every other shape names the Binary (its current version).
    expected = [f"Binary/{bid}", f"Binary/{bid}/_history/1", f"Binary/{bid}", f"Binary/{bid}"]
    for content, url in zip(stored["content"], expected, strict=True):
        assert content["attachment"] == {"url": url, "contentType": "image/png",
                                         "size": len(PNG_BYTES), "hash": sha1_b64(PNG_BYTES)}
    # Stored versions carry the normalized form too (history shows them as stored here).
    hist = plain.get(f"/DocumentReference/{r.json()['id']}/_history").json()
    assert hist["entry"][0]["resource"]["content"][3]["attachment"]["url"] == f"Binary/{bid}"


def test_equivalent_spellings_of_our_urls_are_normalized_too(plain_server: ServerProcess, plain: FhirApi) -> None:
    """An absolute URL spelled another way that RFC 3986 makes equivalent (scheme or host in upper case, the
    default port, `.` and `..` segments, an escaped unreserved character) names the same Binary: stored as
    `Binary/{id}`, not verbatim, for our FHIR base and for our signed storage URLs alike."""
    binary = upload(plain)
    bid, signed = binary["id"], binary["signed"]
    scheme, rest = signed.split("://", 1)
    host, path = rest.split("/", 1)
    base_scheme, base_rest = plain.base.split("://", 1)
    shapes = [
        f"{scheme.upper()}://{host}/{path}",
        f"{scheme}://{host}/./{path}",
        f"{scheme}://{host.upper()}/x/../{path}",
        f"{base_scheme.upper()}://{base_rest}/Binary/{bid}",
        f"{base_scheme}://{base_rest}/./Binary/{bid}",
        f"{base_scheme}://{base_rest}/%42inary/{bid}",
    ]
    r = create(plain, doc_ref(*shapes))
    assert r.status_code == 201, r.text
    stored = plain.get(f"/DocumentReference/{r.json()['id']}").json()
    assert [c["attachment"]["url"] for c in stored["content"]] == [f"Binary/{bid}"] * len(shapes)
    # a tampered signature stays refused in any spelling
    bad = create(plain, doc_ref(replace_query(f"{scheme.upper()}://{host}/{path}", sig="A" * 43)))
    assert bad.status_code == 400, bad.text


def test_blob_stored_binary_sizes_and_hashes_come_from_the_registry(plain: FhirApi) -> None:
    bid = upload(plain, LARGE, "application/pdf")["id"]
    r = create(plain, {"resourceType": "Patient", "photo": [{"url": f"Binary/{bid}", "contentType": "x/keep"}]})
    assert r.status_code == 201, r.text
    photo = r.json()["photo"][0]
    assert photo == {"url": f"Binary/{bid}", "contentType": "x/keep", "size": len(LARGE), "hash": sha1_b64(LARGE)}


def test_other_urls_and_non_attachment_urls_are_left_alone(plain: FhirApi) -> None:
    bid = upload(plain)["id"]
    r = create(plain, {"resourceType": "Patient",
                       "extension": [{"url": f"Binary/{bid}", "valueString": "not an attachment"}],
                       "photo": [{"url": "https://elsewhere.example/Binary/x.png"}]})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["extension"][0]["url"] == f"Binary/{bid}"
    assert body["photo"][0] == {"url": "https://elsewhere.example/Binary/x.png"}


@pytest.mark.parametrize("shape", ["Binary/{id}", "Binary/{id}/_history/1", "{base}/Binary/{id}"])
def test_a_missing_binary_is_refused_naming_the_element(api: FhirApi, shape: str) -> None:
    url = shape.format(id="no-such-binary", base=api.base)
    r = create(api, doc_ref(url))
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["DocumentReference.content[0].attachment.url"]
    assert "Binary/no-such-binary" in issue["diagnostics"]
    assert api.get("/DocumentReference", params={"_count": 200}).status_code == 200


def test_a_deleted_binary_is_refused(api: FhirApi) -> None:
    bid = upload(api)["id"]
    assert api.delete(f"/Binary/{bid}").status_code == 204
    assert create(api, doc_ref(f"Binary/{bid}")).status_code == 400


def test_a_resource_naming_a_binary_deleted_since_can_still_be_edited(plain: FhirApi) -> None:
    """Deleting a Binary leaves the resources that name it editable: an update or patch that keeps the
    Attachment as it was succeeds; naming that Binary anew, or another deleted one, is still refused."""
    bid, other = upload(plain)["id"], upload(plain, b"other")["id"]
    doc = create(plain, {**doc_ref(f"Binary/{bid}"), "description": "before"}).json()
    for gone in (bid, other):
        assert plain.delete(f"/Binary/{gone}").status_code == 204
    doc["description"] = "after"
    r = plain.put(f"/DocumentReference/{doc['id']}", json=doc)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["attachment"]["url"] == f"Binary/{bid}"
    r = plain.patch(f"/DocumentReference/{doc['id']}", json=[{"op": "replace", "path": "/description", "value": "p"}],
                    headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "p" and r.json()["content"][0]["attachment"]["url"] == f"Binary/{bid}"
    # a url changed to another Binary that does not exist, or a new resource naming the deleted one
    changed = {**r.json(), "content": [{"attachment": {"url": f"Binary/{other}"}}]}
    assert plain.put(f"/DocumentReference/{doc['id']}", json=changed).status_code == 400
    assert create(plain, doc_ref(f"Binary/{bid}")).status_code == 400
    again = plain.patch(f"/DocumentReference/{doc['id']}", headers={"Content-Type": "application/json-patch+json"},
                        json=[{"op": "add", "path": "/content/-", "value": {"attachment": {"url": f"Binary/{bid}"}}}])
    assert again.status_code == 400, again.text  # one more Attachment naming it is new


def test_a_resource_naming_a_binary_updated_since_can_still_be_edited(api: FhirApi) -> None:
    """After the Binary gets new content, the Attachments written against its old content keep their size
    and hash (README: they describe the version they were written against); a read-modify-write, a patch
    and a $binary-access-write to another Attachment of the resource succeed. They were refused because
    the size no longer matched the Binary's current content. A size changed by the edit is still checked."""
    bid = upload(api, b"abc", "text/plain")["id"]
    doc = create(api, {**doc_ref(f"Binary/{bid}"), "description": "before"}).json()
    assert doc["content"][0]["attachment"]["size"] == 3
    assert api.put(f"/Binary/{bid}", content=b"abcdef", headers={"Content-Type": "text/plain"}).status_code == 200
    read = api.get(f"/DocumentReference/{doc['id']}").json()  # its url is signed; size and hash as written
    assert read["content"][0]["attachment"]["size"] == 3
    read["description"] = "after"
    r = api.put(f"/DocumentReference/{doc['id']}", json=read)
    assert r.status_code == 200, r.text
    r = api.patch(f"/DocumentReference/{doc['id']}", json=[{"op": "replace", "path": "/description", "value": "p"}],
                  headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    media = create(api, {"resourceType": "Media", "status": "preparation",
                         "content": {"url": f"Binary/{bid}"}}).json()
    assert api.put(f"/Binary/{bid}", content=b"abcdefghi", headers={"Content-Type": "text/plain"}).status_code == 200
    r = api.patch(f"/Media/{media['id']}", json=[{"op": "replace", "path": "/status", "value": "completed"}],
                  headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 200, r.text
    # a size the edit changes is checked against the content as it is now
    stale = {**r.json(), "content": {**r.json()["content"], "size": 4}}
    r = api.put(f"/Media/{media['id']}", json=stale)
    assert r.status_code == 400 and "size" in r.text


def test_conflicting_size_or_hash_is_refused_naming_the_element(api: FhirApi) -> None:
    bid = upload(api)["id"]
    bad_size = {"resourceType": "Media", "status": "completed", "content": {"url": f"Binary/{bid}", "size": 1}}
    r = create(api, bad_size)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Media.content.size"]
    bad_hash = {"resourceType": "Communication", "status": "completed",
                "payload": [{"contentAttachment": {"url": f"Binary/{bid}", "hash": sha1_b64(b"other")}}]}
    r = create(api, bad_hash)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Communication.payload[0].contentAttachment.hash"]
    good = {"resourceType": "Media", "status": "completed",
            "content": {"url": f"Binary/{bid}", "size": len(PNG_BYTES), "hash": sha1_b64(PNG_BYTES)}}
    assert create(api, good).status_code == 201


def test_a_tampered_signed_url_is_refused_on_write(api: FhirApi) -> None:
    signed = upload(api)["signed"]
    r = create(api, doc_ref(replace_query(signed, sig="A" * 43)))
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["DocumentReference.content[0].attachment.url"]


# -- read-time rewriting -------------------------------------------------------------------------
def test_every_read_path_signs_the_current_version(server: ServerProcess, api: FhirApi) -> None:
    bid = upload(api)["id"]
    r = create(api, {"resourceType": "Communication", "status": "completed",
                     "payload": [{"contentAttachment": {"url": f"Binary/{bid}"}}]})
    assert r.status_code == 201
    cid = r.json()["id"]

    def url_in(resource: dict[str, Any]) -> str:
        return str(resource["payload"][0]["contentAttachment"]["url"])

    assert is_signed_for(url_in(r.json()), server, bid, 1)  # the create response
    assert is_signed_for(url_in(api.get(f"/Communication/{cid}").json()), server, bid, 1)
    assert is_signed_for(url_in(api.get(f"/Communication/{cid}/_history/1").json()), server, bid, 1)
    hist = api.get(f"/Communication/{cid}/_history").json()
    assert is_signed_for(url_in(hist["entry"][0]["resource"]), server, bid, 1)
    found = api.get("/Communication", params={"_id": cid}).json()
    assert is_signed_for(url_in(found["entry"][0]["resource"]), server, bid, 1)
    # A new version of the Binary: reads now sign version 2.
    assert api.put(f"/Binary/{bid}", content=b"v2", headers={"Content-Type": "text/plain"}).status_code == 200
    assert is_signed_for(url_in(api.get(f"/Communication/{cid}").json()), server, bid, 2)

    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Communication/{cid}"}},
        {"request": {"method": "GET", "url": f"Communication?_id={cid}"}},
        {"resource": {"resourceType": "Communication", "status": "completed",
                      "payload": [{"contentAttachment": {"url": f"Binary/{bid}"}}]},
         "request": {"method": "POST", "url": "Communication"}},
    ]}
    out = api.post("", json=batch).json()
    assert is_signed_for(url_in(out["entry"][0]["resource"]), server, bid, 2)
    assert is_signed_for(url_in(out["entry"][1]["resource"]["entry"][0]["resource"]), server, bid, 2)
    assert is_signed_for(url_in(out["entry"][2]["resource"]), server, bid, 2)
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:4b5e7f5e-1c1a-4b7e-9d51-0c3f0e2a9a11",
         "resource": {"resourceType": "Communication", "status": "completed",
                      "payload": [{"contentAttachment": {"url": f"{api.base}/Binary/{bid}"}}]},
         "request": {"method": "POST", "url": "Communication"}},
        {"request": {"method": "GET", "url": f"Communication/{cid}"}},
    ]}
    out = api.post("", json=transaction).json()
    assert is_signed_for(url_in(out["entry"][0]["resource"]), server, bid, 2)
    assert is_signed_for(url_in(out["entry"][1]["resource"]), server, bid, 2)


def test_only_attachment_urls_are_signed_whatever_else_reads_alike(server: ServerProcess, api: FhirApi) -> None:
    """Signing replaces Attachment urls in the stored JSON text; an extension whose url reads
    `Binary/{id}` too must stay as it is, on every read and on the reads after the first."""
    first, second = upload(api)["id"], upload(api)["id"]
    r = create(api, {"resourceType": "Patient",
                     "extension": [{"url": f"Binary/{first}", "valueString": "not an attachment"}],
                     "photo": [{"url": f"Binary/{first}"}, {"url": f"Binary/{first}/_history/1"},
                               {"url": f"Binary/{second}"}, {"url": f"Binary/{first}"}]})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    doc = create(api, doc_ref(f"Binary/{second}", f"Binary/{first}"))
    assert doc.status_code == 201, doc.text
    for _ in range(2):
        for body in (api.get(f"/Patient/{pid}").json(),
                     api.get("/Patient", params={"_id": pid}).json()["entry"][0]["resource"]):
            assert body["extension"][0] == {"url": f"Binary/{first}", "valueString": "not an attachment"}
            photos = [p["url"] for p in body["photo"]]
            assert is_signed_for(photos[0], server, first, 1) and photos[3] == photos[0]
            assert is_signed_for(photos[1], server, first, 1) and "pinned=1" in photos[1]
            assert is_signed_for(photos[2], server, second, 1)
        page = api.get("/DocumentReference", params={"_id": doc.json()["id"]}).json()
        urls = [c["attachment"]["url"] for c in page["entry"][0]["resource"]["content"]]
        assert is_signed_for(urls[0], server, second, 1) and is_signed_for(urls[1], server, first, 1)


def test_binary_answers_are_plain_r4_the_signed_url_in_a_link_header(api: FhirApi) -> None:
    """Create and update answers, raw or JSON, and reads carry no `url` (not an R4 Binary element); the
    signed URL of the version written is in `Link`, and works without a token."""
    created = upload(api)
    assert "url" not in created and "/storage/" in created["signed"]
    assert httpx.get(created["signed"]).content == PNG_BYTES
    read = api.get(f"/Binary/{created['id']}", headers={"Accept": "application/fhir+json"}).json()
    assert "url" not in read
    json_created = api.post("/Binary", json={"resourceType": "Binary", "contentType": "text/plain",
                                             "data": base64.b64encode(b"hi").decode()})
    assert json_created.status_code == 201 and "url" not in json_created.json()
    updated = api.put(f"/Binary/{created['id']}", content=b"v2", headers={"Content-Type": "text/plain"})
    assert "url" not in updated.json() and f"/storage/{created['id']}/2?" in signed_url_of(updated)
    minimal = api.post("/Binary", content=b"m", headers={"Content-Type": "text/plain", "Prefer": "return=minimal"})
    assert minimal.content == b"" and httpx.get(signed_url_of(minimal)).content == b"m"


def test_extended_mode_requests_get_the_url_element(api: FhirApi) -> None:
    """MedplumClient's extended mode (`X-Medplum: extended`) gets Medplum's `url` too; answers say that they
    vary on that header."""
    r = api.post("/Binary", content=PNG_BYTES, headers={"Content-Type": "image/png", "X-Medplum": "extended"})
    assert r.status_code == 201 and r.json()["url"] == signed_url_of(r)
    assert "x-medplum" in r.headers["Vary"].lower()
    assert httpx.get(r.json()["url"]).content == PNG_BYTES


def test_rewriting_can_be_switched_off(plain: FhirApi) -> None:
    bid = upload(plain)["id"]
    r = create(plain, doc_ref(f"Binary/{bid}"))
    assert plain.get(f"/DocumentReference/{r.json()['id']}").json()["content"][0]["attachment"]["url"] == \
        f"Binary/{bid}"


def test_the_same_url_within_a_window(api: FhirApi) -> None:
    bid = upload(api)["id"]
    rid = create(api, doc_ref(f"Binary/{bid}", f"Binary/{bid}")).json()["id"]

    def urls() -> list[str]:
        doc = api.get(f"/DocumentReference/{rid}").json()
        return [c["attachment"]["url"] for c in doc["content"]]

    first = urls()
    assert first[0] == first[1]
    # The default window is 600 s: two reads in a row fall into one window unless a boundary passes
    # between them, in which case the third read matches the second.
    second, third = urls(), urls()
    assert first == second or second == third


def test_a_caller_who_may_not_read_the_binary_sees_binary_id(server: ServerProcess, api: FhirApi) -> None:
    bid = upload(api, **{"X-Security-Context": "Patient/secret-owner"})["id"]
    pid = create(api, {"resourceType": "Patient", "id": "x"}).json()["id"]
    rid = create(api, {"resourceType": "DocumentReference", "status": "current",
                       "subject": {"reference": f"Patient/{pid}"},
                       "content": [{"attachment": {"url": f"Binary/{bid}"}}]}).json()["id"]
    client = server.create_client("limited", "system/DocumentReference.rs")
    token = server.token(client["client_id"], client["client_secret"])
    with FhirApi(server.base, headers={"Authorization": f"Bearer {token}"}) as limited:
        doc = limited.get(f"/DocumentReference/{rid}").json()
        assert doc["content"][0]["attachment"]["url"] == f"Binary/{bid}"
    assert "/storage/" in api.get(f"/DocumentReference/{rid}").json()["content"][0]["attachment"]["url"]


# -- the storage route ---------------------------------------------------------------------------
def test_storage_serves_the_signed_version_with_ranges_and_cors(api: FhirApi) -> None:
    binary = upload(api, LARGE, "application/pdf", **{"Content-Disposition": 'attachment; filename="a.pdf"'})
    url = binary["signed"]
    with httpx.Client() as anyone:
        got = anyone.get(url, headers={"Authorization": "Bearer not-a-valid-token"})  # ignored
        assert got.status_code == 200 and got.content == LARGE
        assert got.headers["Content-Type"] == "application/pdf"
        assert got.headers["ETag"] == f'"{hashlib.sha256(LARGE).hexdigest()}"'
        assert "a.pdf" in got.headers["Content-Disposition"]
        max_age = int(got.headers["Cache-Control"].removeprefix("private, max-age="))
        assert 3000 < max_age <= 3600 + 600
        assert got.headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Range" in got.headers["Access-Control-Expose-Headers"]
        part = anyone.get(url, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == LARGE[100:200]
        assert part.headers["Content-Range"] == f"bytes 100-199/{len(LARGE)}"
        head = anyone.head(url)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(len(LARGE))
        assert anyone.get(url, headers={"If-None-Match": got.headers["ETag"]}).status_code == 304
        pre = anyone.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                                           "Access-Control-Request-Headers": "range"})
        assert pre.status_code == 204 and "range" in pre.headers["Access-Control-Allow-Headers"].lower()
        # a credentialed fetch (MedplumClient's) is allowed: the origin is named, with credentials
        assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert pre.headers["Access-Control-Allow-Credentials"] == "true"
        # and the headers a client adds (X-Medplum) are allowed too
        extra = anyone.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                                             "Access-Control-Request-Headers": "authorization,x-medplum"})
        assert "x-medplum" in extra.headers["Access-Control-Allow-Headers"].lower()
        # a 304 carries the CORS headers too, or the browser could not use it
        again = anyone.get(url, headers={"If-None-Match": got.headers["ETag"], "Origin": "https://app.example"})
        assert again.status_code == 304 and again.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_tampering_with_any_part_is_forbidden(api: FhirApi) -> None:
    binary = upload(api)
    url = binary["signed"]
    q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    other = upload(api)["id"]
    tampered = {
        "id": url.replace(binary["id"], other),
        "version": url.replace(f"{binary['id']}/1", f"{binary['id']}/2"),
        "exp": replace_query(url, exp=str(int(q["exp"]) + 600)),
        "kid": replace_query(url, kid="f" * len(q["kid"])),
        "sig": replace_query(url, sig=q["sig"][::-1]),
        "no sig": url.split("?")[0] + f"?exp={q['exp']}&kid={q['kid']}",
        "nothing": url.split("?")[0],
    }
    with httpx.Client() as anyone:
        for what, bad in tampered.items():
            r = anyone.get(bad)
            assert r.status_code == 403, what
            assert r.json()["resourceType"] == "OperationOutcome"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert anyone.get(url).status_code == 200


def test_a_url_for_version_1_serves_version_1_after_an_update(api: FhirApi) -> None:
    binary = upload(api, b"version one", "text/plain")
    assert api.put(f"/Binary/{binary['id']}", content=b"version two!", headers={"Content-Type": "text/plain"}
                   ).status_code == 200
    with httpx.Client() as anyone:
        assert anyone.get(binary["signed"]).content == b"version one"
    # Even after the Binary is deleted, the version a live URL names stays readable through it.
    assert api.delete(f"/Binary/{binary['id']}").status_code == 204
    with httpx.Client() as anyone:
        assert anyone.get(binary["signed"]).content == b"version one"


def test_expiry_is_gone_and_expired_urls_still_normalize(server_factory: Callable[..., ServerProcess]) -> None:
    short = server_factory("sqlite", signed_url_ttl=2)  # window: 1 s
    with short.api() as api:
        binary = upload(api)
        url = binary["signed"]
        with httpx.Client() as anyone:
            assert anyone.get(url).status_code == 200
            wait_until(lambda: anyone.get(url).status_code != 200, "the signed URL to expire", timeout=20)
            r = anyone.get(url)
            assert r.status_code == 410 and r.json()["resourceType"] == "OperationOutcome"
        created = create(api, doc_ref(url))
        assert created.status_code == 201, created.text
        fresh = created.json()["content"][0]["attachment"]["url"]
        assert fresh != url and storage_path(fresh) == storage_path(url)


def test_a_url_signed_by_one_node_is_served_by_another(server_factory: Callable[..., ServerProcess],
                                                       tmp_path: Path) -> None:
    require_postgres()
    with postgres_database() as database_url:
        shared = {"database_url": database_url, "storage_dir": str(tmp_path / "blobs")}
        node_a = server_factory("postgres", **shared)
        node_b = ServerProcess(tmp_path / "node-b", settings_env(**shared)).start()
        try:
            with node_a.api() as api:
                binary = upload(api, LARGE, "application/pdf")
            url_b = binary["signed"].replace(node_a.url, node_b.url)
            with httpx.Client() as anyone:
                r = anyone.get(url_b, headers={"Range": "bytes=0-9"})
                assert r.status_code == 206 and r.content == LARGE[:10]
                assert anyone.get(replace_query(url_b, sig="B" * 43)).status_code == 403
        finally:
            node_b.stop()
            node_a.stop()


# -- s3 mode: redirects to the object store ------------------------------------------------------
@pytest.fixture(scope="module")
def redirecting_server(server_factory: Callable[..., ServerProcess], seaweedfs: SeaweedS3) -> ServerProcess:
    return server_factory("sqlite", **seaweedfs.settings(unique_bucket("fv-redirect")), s3_redirect_downloads=True)


def test_s3_redirect_downloads_send_the_client_to_a_presigned_url(redirecting_server: ServerProcess,
                                                                  seaweedfs: SeaweedS3) -> None:
    with redirecting_server.api() as api:
        binary = upload(api, LARGE, "application/pdf", **{"Content-Disposition": 'attachment; filename="scan.pdf"'})
        small = upload(api, PNG_BYTES, "image/png")  # inline: no object to send anyone to
    with httpx.Client(timeout=60) as anyone:
        r = anyone.get(binary["signed"])
        assert r.status_code == 307, r.text
        target = r.headers["Location"]
        assert target.startswith(f"{seaweedfs.endpoint}/") and "X-Amz-Signature=" in target
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        # the object store's URL lives no longer than the signed URL it stands for
        max_age = int(r.headers["Cache-Control"].removeprefix("private, max-age="))
        assert 0 < int(parse_qs(urlsplit(target).query)["X-Amz-Expires"][0]) <= max_age
        followed = anyone.get(target)
        assert followed.status_code == 200
        assert followed.content == LARGE
        assert followed.headers["Content-Type"] == "application/pdf"
        assert "scan.pdf" in followed.headers["Content-Disposition"]
        part = anyone.get(target, headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == LARGE[100:200]
        # the redirect itself is signed: a tampered storage URL is refused before any redirect
        assert anyone.get(replace_query(binary["signed"], sig="A" * 43)).status_code == 403
        inline = anyone.get(small["signed"])
        assert inline.status_code == 200 and inline.content == PNG_BYTES
        assert inline.headers["Content-Type"] == "image/png"


def test_normalized_url_follows_rfc_3986() -> None:
    from fhirvault.fhir.references import normalized_url

    assert normalized_url("HTTP://Example.ORG:80/fhir/./R4/%42inary/1?q=%41") == "http://example.org/fhir/R4/Binary/1?q=%41"
    assert normalized_url("https://h:443/a/b/../../c/%2f") == "https://h/c/%2F"
    assert normalized_url("http://h:8080/a/..") == "http://h:8080/"
    assert normalized_url("http://[::1]:8000/x/./y") == "http://[::1]:8000/x/y"
    for unchanged in ("Binary/1", "urn:uuid:1", "http://user@h/x", "http://h:99999/x", "ftp://H/x"):
        assert normalized_url(unchanged) == unchanged
