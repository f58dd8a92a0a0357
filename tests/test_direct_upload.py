"""Direct uploads to the object store (s3 mode): Binary/$upload-url, a PUT to the SeaweedFS gateway's
presigned URL (curl, httpx), Binary/$upload-complete; refusals (size, hash, another client, no token),
the sweeper, other storage modes, and `fhirvault upload --direct`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.binary import (
    binary_count,
    blob_rows,
    pseudo_random,
    s3_keys,
    server_s3_client,
    signed_url_of,
    wait_until,
)
from tests.support.s3 import unique_bucket
from tests.support.server import FhirApi, ServerProcess

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 allows: a 12 MiB upload goes in three parts


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture(scope="session")
def s3_server_for(server_factory: Callable[..., ServerProcess], s3_settings: dict[str, Any]
                  ) -> Callable[..., ServerProcess]:
    """An s3-mode server on `database` in a bucket of its own, parts of 5 MiB, started once per settings."""
    started: dict[tuple[Any, ...], ServerProcess] = {}

    def get(database: str = "sqlite", **extra: Any) -> ServerProcess:
        key = (database, *sorted(extra.items()))
        if key not in started:
            started[key] = server_factory(database, **{**s3_settings, "s3_bucket": unique_bucket("fv-direct")},
                                          direct_upload_part_bytes=PART, **extra)
        return started[key]

    return get


def parameters(**values: Any) -> dict[str, Any]:
    out = []
    for name, value in values.items():
        if name == "securityContext":
            out.append({"name": name, "valueReference": {"reference": value}})
        elif name == "size":
            out.append({"name": name, "valueDecimal": value})
        elif name == "contentType":
            out.append({"name": name, "valueCode": value})
        elif name == "sha256":
            out.append({"name": name, "valueBase64Binary": value})
        else:
            out.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": out}


def begin(api: FhirApi, **values: Any) -> dict[str, Any]:
    r = api.post("/Binary/$upload-url", json=parameters(**values))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["resourceType"] == "Parameters"
    out: dict[str, Any] = {"headers": {}, "parts": []}
    for p in answer["parameter"]:
        if p["name"] == "header":
            name, _, value = p["valueString"].partition(":")
            out["headers"][name.strip()] = value.strip()
        elif p["name"] == "part":
            fields = {q["name"]: q for q in p["part"]}
            out["parts"].append((fields["url"]["valueUri"], fields["size"]["valueInteger"],
                                 fields.get("number", {}).get("valuePositiveInt")))
        else:
            out[p["name"]] = next(v for k, v in p.items() if k.startswith("value"))
    return out


def complete(api: FhirApi, upload: str) -> httpx.Response:
    return api.post("/Binary/$upload-complete",
                    json={"resourceType": "Parameters", "parameter": [{"name": "upload", "valueString": upload}]})


def key_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def direct_rows(server: ServerProcess) -> int:
    from tests.support.binary import _sql

    return int(_sql(server, "SELECT count(*) FROM direct_uploads")[0][0])


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_single_put_with_curl_then_completion_creates_the_binary(database: str, s3_server_for, tmp_path) -> None:
    server = s3_server_for(database)
    content = pseudo_random(300_000, seed=21)
    path = tmp_path / "scan.png"
    path.write_bytes(content)
    with server.api() as api:
        patient = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        ticket = begin(api, contentType="image/png", size=len(content), sha256=b64_sha256(content),
                       securityContext=f"Patient/{patient}", filename="scan.png")
        assert len(ticket["parts"]) == 1 and ticket["parts"][0][1] == len(content)
        assert ticket["headers"] == {"Content-Type": "image/png", "x-amz-checksum-sha256": b64_sha256(content)}
        url = ticket["parts"][0][0]
        assert url.startswith(server.env["FHIRVAULT_S3_ENDPOINT"])  # the store's own URL, not ours
        # the pending blob is registered from the moment the URL is handed out
        assert (key_of(url), "pending", key_of(url)) in blob_rows(server)
        before = binary_count(server)
        put = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                              *sum((["-H", f"{k}: {v}"] for k, v in ticket["headers"].items()), []),
                              "--data-binary", f"@{path}", url], capture_output=True, text=True, timeout=60)
        assert put.stdout == "200", put.stderr
        assert binary_count(server) == before  # nothing until completion

        done = complete(api, ticket["upload"])
        assert done.status_code == 201, done.text
        binary = done.json()
        assert binary["resourceType"] == "Binary" and "data" not in binary
        assert binary["contentType"] == "image/png" and binary["meta"]["versionId"] == "1"
        assert binary["securityContext"] == {"reference": f"Patient/{patient}"}
        assert done.headers["Location"].endswith(f"/Binary/{binary['id']}/_history/1")
        assert binary_count(server) == before + 1
        # byte-identical through the raw read and the signed URL
        raw = api.get(f"/Binary/{binary['id']}")
        assert raw.content == content and raw.headers["content-type"].startswith("image/png")
        assert "scan.png" in raw.headers.get("content-disposition", "")
        assert httpx.get(signed_url_of(done)).content == content
        # the blob is committed with the content's hashes, under the key the client uploaded to
        assert (key_of(url), "committed", key_of(url)) in blob_rows(server)
        # an Attachment pointing at it gets size and SHA-1 filled in as for any Binary
        media = api.post("/Media", json={"resourceType": "Media", "status": "completed",
                                         "content": {"url": f"Binary/{binary['id']}"}}).json()
        assert media["content"]["size"] == len(content)
        assert media["content"]["hash"] == base64.b64encode(hashlib.sha1(content).digest()).decode()
        # a repeated completion (a lost answer) gets the same Binary, and nothing new is stored
        again = complete(api, ticket["upload"])
        assert again.status_code == 200 and again.json()["id"] == binary["id"]
        assert binary_count(server) == before + 1


def test_multipart_upload_with_httpx(s3_server_for) -> None:
    server = s3_server_for()
    content = pseudo_random(12 * MiB + 3, seed=22)
    with server.api() as api:
        ticket = begin(api, contentType="video/mp4", size=len(content), sha256=b64_sha256(content))
        assert [(size, number) for _, size, number in ticket["parts"]] == [(PART, 1), (PART, 2), (2 * MiB + 3, 3)]
        offset = 0
        uploads = []
        for url, size, _ in ticket["parts"]:
            uploads.append((url, content[offset:offset + size]))
            offset += size
        # completing with a part missing: 409, and the upload stays open
        for url, piece in uploads[:2]:
            assert httpx.put(url, content=piece, timeout=60).status_code == 200
        early = complete(api, ticket["upload"])
        assert early.status_code == 409 and "3" in early.json()["issue"][0]["diagnostics"]
        # a part of the wrong size is refused by the store (its size is signed into the URL)
        assert httpx.put(uploads[2][0], content=uploads[2][1] + b"x", timeout=60).status_code == 403
        assert httpx.put(uploads[2][0], content=uploads[2][1], timeout=60).status_code == 200
        done = complete(api, ticket["upload"])
        assert done.status_code == 201, done.text
        rid = done.json()["id"]
        assert api.get(f"/Binary/{rid}").content == content
        # one object under the blob's key, no multipart upload left open
        key = key_of(ticket["parts"][0][0].split("?")[0])
        assert s3_keys(server) >= {key} and not any(k.startswith(key + " ") for k in s3_keys(server))


def test_concurrent_completions_create_one_binary(s3_server_for) -> None:
    from concurrent.futures import ThreadPoolExecutor

    server = s3_server_for()
    content = pseudo_random(11 * MiB, seed=33)
    with server.api() as api:
        ticket = begin(api, contentType="video/mp4", size=len(content))
        offset = 0
        for url, size, _ in ticket["parts"]:
            assert httpx.put(url, content=content[offset:offset + size], timeout=60).status_code == 200
            offset += size
        before = binary_count(server)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: complete(api, ticket["upload"]), range(4)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 409}, statuses
        assert binary_count(server) == before + 1
        ids = {a.json()["id"] for a in answers if a.status_code in (200, 201)}
        assert len(ids) == 1 and api.get(f"/Binary/{ids.pop()}").content == content


def test_an_upload_survives_a_server_restart(s3_server_for) -> None:
    server = s3_server_for(direct_upload_ttl=600)  # a server of this test's own: it is restarted
    content = pseudo_random(7 * MiB, seed=34)
    with server.api() as api:
        ticket = begin(api, contentType="application/dicom", size=len(content), sha256=b64_sha256(content))
        first_url, first_size, _ = ticket["parts"][0]
        assert httpx.put(first_url, content=content[:first_size], timeout=60).status_code == 200
    server.stop()
    server.start()
    with server.api() as api:
        assert httpx.put(ticket["parts"][1][0], content=content[first_size:], timeout=60).status_code == 200
        done = complete(api, ticket["upload"])
        assert done.status_code == 201 and api.get(f"/Binary/{done.json()['id']}").content == content


def test_small_content_is_kept_inline_like_a_raw_post(s3_server_for) -> None:
    server = s3_server_for()
    content = b"a short note"
    with server.api() as api:
        ticket = begin(api, contentType="text/plain", size=len(content))
        assert httpx.put(ticket["parts"][0][0], content=content, headers=ticket["headers"]).status_code == 200
        done = complete(api, ticket["upload"])
        assert done.status_code == 201
        rid = done.json()["id"]
        raw_post = api.post("/Binary", content=content, headers={"Content-Type": "text/plain"}).json()["id"]
        from tests.support.binary import blob_ids_of

        assert blob_ids_of(server, rid) == blob_ids_of(server, raw_post) == [None]  # inline, as POST stores it
        assert api.get(f"/Binary/{rid}").content == content


def test_wrong_size_is_refused_and_removed(s3_server_for) -> None:
    server = s3_server_for()
    content = pseudo_random(200_000, seed=23)
    with server.api() as api:
        ticket = begin(api, contentType="application/pdf", size=len(content), sha256=b64_sha256(content))
        url = ticket["parts"][0][0]
        # the store itself refuses other lengths: Content-Length is signed into the URL
        assert httpx.put(url, content=content[:-1], headers=ticket["headers"]).status_code == 403
        # a store that did not check it: other bytes under the key (written with the server's own keys)
        s3 = server_s3_client(server)
        try:
            s3.put_object(Bucket=server.env["FHIRVAULT_S3_BUCKET"], Key=key_of(url.split("?")[0]),
                          Body=content[:-10])
        finally:
            s3.close()
        before = binary_count(server)
        r = complete(api, ticket["upload"])
        assert r.status_code == 422, r.text
        issue = r.json()["issue"][0]
        assert "199990" in issue["diagnostics"] and "200000" in issue["diagnostics"]
        assert binary_count(server) == before
        key = key_of(url.split("?")[0])
        assert key not in s3_keys(server) and all(row[0] != key for row in blob_rows(server))
        assert complete(api, ticket["upload"]).status_code == 404  # the upload is over


def test_wrong_hash_is_refused_and_removed(s3_server_for) -> None:
    server = s3_server_for()
    content = pseudo_random(150_000, seed=24)
    other = pseudo_random(150_000, seed=25)  # same size, other bytes
    with server.api() as api:
        ticket = begin(api, contentType="image/jpeg", size=len(content), sha256=b64_sha256(content))
        url = ticket["parts"][0][0]
        # SeaweedFS checks x-amz-checksum-sha256 against the bytes: other bytes are refused on PUT
        refused = httpx.put(url, content=other, headers=ticket["headers"])
        assert refused.status_code == 400 and "BadDigest" in refused.text
        # bytes that reached the store another way are caught by the server reading them back
        s3 = server_s3_client(server)
        try:
            s3.put_object(Bucket=server.env["FHIRVAULT_S3_BUCKET"], Key=key_of(url.split("?")[0]), Body=other)
        finally:
            s3.close()
        before = binary_count(server)
        r = complete(api, ticket["upload"])
        assert r.status_code == 422 and "SHA-256" in r.json()["issue"][0]["diagnostics"]
        assert binary_count(server) == before
        assert key_of(url.split("?")[0]) not in s3_keys(server)


def test_completion_before_the_put_is_409_and_the_upload_stays(s3_server_for) -> None:
    server = s3_server_for()
    content = pseudo_random(100_000, seed=26)
    with server.api() as api:
        ticket = begin(api, contentType="image/png", size=len(content), sha256=b64_sha256(content))
        r = complete(api, ticket["upload"])
        assert r.status_code == 409 and "Nothing has been uploaded" in r.json()["issue"][0]["diagnostics"]
        assert httpx.put(ticket["parts"][0][0], content=content, headers=ticket["headers"]).status_code == 200
        assert complete(api, ticket["upload"]).status_code == 201


def test_the_upload_urls_cannot_change_a_created_binary(s3_server_for) -> None:
    """The URLs stay valid until they expire, also once the Binary exists: a single PUT is bound to the
    declared SHA-256 (the store refuses other bytes), and without one the content goes as parts, whose
    URLs die when completion joins them."""
    server = s3_server_for()
    content = pseudo_random(120_000, seed=31)
    other = pseudo_random(120_000, seed=32)
    with server.api() as api:
        single = begin(api, contentType="image/png", size=len(content), sha256=b64_sha256(content))
        parts = begin(api, contentType="image/png", size=len(content))
        assert [p[2] for p in single["parts"]] == [None] and [p[2] for p in parts["parts"]] == [1]
        assert parts["headers"] == {}
        assert httpx.put(single["parts"][0][0], content=content, headers=single["headers"]).status_code == 200
        assert httpx.put(parts["parts"][0][0], content=content).status_code == 200
        ids = [complete(api, t["upload"]).json()["id"] for t in (single, parts)]
        assert httpx.put(single["parts"][0][0], content=other, headers=single["headers"]).status_code == 400
        assert httpx.put(single["parts"][0][0], content=other,
                         headers={"Content-Type": "image/png"}).status_code == 403  # the checksum is signed
        assert httpx.put(parts["parts"][0][0], content=other).status_code == 404  # NoSuchUpload
        for rid in ids:
            assert api.get(f"/Binary/{rid}").content == content


def test_empty_content(s3_server_for) -> None:
    server = s3_server_for()
    with server.api() as api:
        ticket = begin(api, contentType="text/plain", size=0)
        assert ticket["headers"]["x-amz-checksum-sha256"] == b64_sha256(b"")  # one checked PUT
        assert httpx.put(ticket["parts"][0][0], content=b"", headers=ticket["headers"]).status_code == 200
        done = complete(api, ticket["upload"])
        assert done.status_code == 201 and api.get(f"/Binary/{done.json()['id']}").content == b""


def test_only_the_client_that_began_an_upload_completes_it(s3_server_for) -> None:
    server = s3_server_for()
    content = pseudo_random(90_000, seed=27)
    other = server.create_client("other-uploader", "system/Binary.crus")
    other_token = server.token(other["client_id"], other["client_secret"])
    with server.api() as api:
        ticket = begin(api, contentType="image/png", size=len(content))
        assert httpx.put(ticket["parts"][0][0], content=content, headers=ticket["headers"]).status_code == 200
        with FhirApi(server.base, headers={"Authorization": f"Bearer {other_token}"}) as intruder:
            r = complete(intruder, ticket["upload"])
            assert r.status_code == 404
        done = complete(api, ticket["upload"])
        assert done.status_code == 201 and api.get(f"/Binary/{done.json()['id']}").content == content


def test_rights_of_post_binary_are_needed(s3_server_for) -> None:
    server = s3_server_for()
    with server.api() as api:
        patient = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        stranger = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    no_create = server.create_client("binary-reader", "system/Binary.rs")
    patient_client = server.create_client("patient-app", "patient/*.cruds", patient=f"Patient/{patient}")
    cases = [(no_create, {}), (patient_client, {"securityContext": f"Patient/{stranger}"})]
    for client, extra in cases:
        token = server.token(client["client_id"], client["client_secret"])
        with FhirApi(server.base, headers={"Authorization": f"Bearer {token}"}) as api:
            r = api.post("/Binary/$upload-url", json=parameters(contentType="image/png", size=100_000, **extra))
            assert r.status_code == 403, r.text
    token = server.token(patient_client["client_id"], patient_client["client_secret"])
    with FhirApi(server.base, headers={"Authorization": f"Bearer {token}"}) as api:
        ticket = begin(api, contentType="image/png", size=100_000, securityContext=f"Patient/{patient}")
        assert ticket["upload"]


def test_no_token_is_401(s3_server_for) -> None:
    server = s3_server_for()
    for op in ("$upload-url", "$upload-complete"):
        r = httpx.post(f"{server.base}/Binary/{op}", json=parameters(contentType="image/png", size=10))
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("body, status, words", [
    (parameters(contentType="image/png"), 400, "size"),
    (parameters(contentType="image/png", size=10, colour="blue"), 400, "colour"),
    (parameters(contentType="image/png", size=1.5), 400, "whole number"),
    (parameters(contentType="image/png", size=10, sha256="bm90IGEgZGlnZXN0"), 400, "32-byte"),
    (parameters(contentType="not a type", size=10), 400, "contentType"),
    (parameters(contentType="image/png", size=10, securityContext="nonsense"), 400, "securityContext"),
    (parameters(contentType="image/png", size=9 * 1024**3), 413, "MAX_BINARY_BYTES"),
    (parameters(contentType="image/png", size=10, filename="a\u0001b.png"), 400, "control character"),
    (parameters(contentType="image/png", size=-1), 400, "0 or more"),
    ({"resourceType": "Patient"}, 400, "Parameters"),
])
def test_bad_input_is_refused_and_hands_out_nothing(s3_server_for, body: dict[str, Any], status: int,
                                                    words: str) -> None:
    server = s3_server_for()
    with server.api() as api:
        before = (blob_rows(server), direct_rows(server))
        r = api.post("/Binary/$upload-url", json=body)
        assert r.status_code == status and words in r.json()["issue"][0]["diagnostics"], r.text
        assert (blob_rows(server), direct_rows(server)) == before


def test_an_abandoned_upload_is_swept_when_it_expires(s3_server_for) -> None:
    # grace 8 s: URLs live at most half of it (4 s); the sweeper passes every 2 s
    server = s3_server_for(pending_blob_grace_seconds=8)
    content = pseudo_random(12 * MiB, seed=28)
    with server.api() as api:
        single = begin(api, contentType="image/png", size=200_000)
        multi = begin(api, contentType="video/mp4", size=len(content))
        assert httpx.put(single["parts"][0][0], content=pseudo_random(200_000), headers=single["headers"]
                         ).status_code == 200
        assert httpx.put(multi["parts"][0][0], content=content[:PART], timeout=60).status_code == 200
        keys = {key_of(single["parts"][0][0].split("?")[0]), key_of(multi["parts"][0][0].split("?")[0])}
        assert keys <= {k.split(" ")[0] for k in s3_keys(server)}
        wait_until(lambda: not keys & {k.split(" ")[0] for k in s3_keys(server)}
                   and not keys & {r[0] for r in blob_rows(server)} and direct_rows(server) == 0,
                   "the expired uploads to be swept", timeout=60)
        assert complete(api, single["upload"]).status_code == 404


def test_after_expiry_the_urls_and_the_completion_are_refused(s3_server_for) -> None:
    import time

    server = s3_server_for(direct_upload_ttl=2)  # the sweeper passes only every 300 s here
    content = pseudo_random(70_000, seed=35)
    with server.api() as api:
        ticket = begin(api, contentType="image/png", size=len(content), sha256=b64_sha256(content))
        time.sleep(3)  # not a timing assertion: waits out the URLs' lifetime
        late = httpx.put(ticket["parts"][0][0], content=content, headers=ticket["headers"])
        assert late.status_code == 403 and "expired" in late.text
        r = complete(api, ticket["upload"])
        assert r.status_code == 410 and "expired" in r.json()["issue"][0]["diagnostics"]


def test_other_storage_modes_do_not_offer_it(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("sqlite", storage_mode="filesystem")
    with server.api() as api:
        r = api.post("/Binary/$upload-url", json=parameters(contentType="image/png", size=10))
        assert r.status_code == 501
        assert "s3" in r.json()["issue"][0]["diagnostics"] and r.json()["issue"][0]["code"] == "not-supported"
        assert complete(api, "0" * 32).status_code == 501
        binary = next(e for e in api.get("/metadata").json()["rest"][0]["resource"] if e["type"] == "Binary")
        assert not {"upload-url", "upload-complete"} & {op["name"] for op in binary["operation"]}
        assert api.get("/OperationDefinition/upload-url").status_code == 404


def test_capability_statement_offers_it_on_binary_only_in_s3_mode(s3_server_for) -> None:
    server = s3_server_for()
    with server.api() as api:
        entries = {e["type"]: e for e in api.get("/metadata").json()["rest"][0]["resource"]}
        binary_ops = {op["name"]: op["definition"] for op in entries["Binary"]["operation"]}
        assert {"upload-url", "upload-complete", "binary-access-read"} <= set(binary_ops)
        assert "upload-url" not in {op["name"] for op in entries["Patient"]["operation"]}
        from fhirclient.models.operationdefinition import OperationDefinition

        for code in ("upload-url", "upload-complete"):
            definition = api.get(f"/OperationDefinition/{code}").json()
            assert definition["resource"] == ["Binary"] and binary_ops[code] == definition["url"]
            assert OperationDefinition(definition, strict=True).code == code


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    creds = json.loads((server.data_dir / "admin-client.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env.update({"FHIRVAULT_URL": server.base, "FHIRVAULT_CLIENT_ID": creds["client_id"],
                "FHIRVAULT_CLIENT_SECRET": creds["client_secret"]})
    return subprocess.run([sys.executable, "-m", "fhirvault.cli", *args], env=env, capture_output=True,
                          text=True, timeout=180)


def test_cli_upload_direct_end_to_end(s3_server_for, tmp_path) -> None:
    server = s3_server_for()
    content = pseudo_random(11 * MiB, seed=29)  # three parts of at most 5 MiB
    path = tmp_path / "video.mp4"
    path.write_bytes(content)
    with server.api() as api:
        patient = api.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        done = cli(server, "upload", str(path), "--direct", "--attach-to", f"Patient/{patient}", "--json")
        assert done.returncode == 0, done.stderr
        binary = json.loads(done.stdout)
        assert binary["contentType"] == "video/mp4"
        assert binary["securityContext"] == {"reference": f"Patient/{patient}"}
        assert api.get(f"/Binary/{binary['id']}").content == content
        photo = api.get(f"/Patient/{patient}").json()["photo"][0]
        assert photo["size"] == len(content) and photo["title"] == "video.mp4"


def test_cli_upload_direct_where_not_offered_says_so(server_factory: Callable[..., ServerProcess],
                                                     tmp_path) -> None:
    server = server_factory("sqlite", storage_mode="filesystem")
    path = tmp_path / "scan.png"
    path.write_bytes(b"x" * 1000)
    before = binary_count(server)
    done = cli(server, "upload", str(path), "--direct")
    assert done.returncode == 1
    assert "does not offer direct uploads" in done.stderr and "without" in done.stderr
    assert binary_count(server) == before


def test_async_client_direct_upload(s3_server_for) -> None:
    import asyncio

    from fhirvault.client import AsyncFhirClient

    server = s3_server_for()
    creds = json.loads((server.data_dir / "admin-client.json").read_text())
    content = pseudo_random(400_000, seed=30)
    seen: list[int] = []

    async def run() -> dict[str, Any]:
        async with AsyncFhirClient(server.base, client_id=creds["client_id"],
                                   client_secret=creds["client_secret"]) as client:
            return await client.create_binary_direct(content, content_type="image/webp",
                                                     on_progress=lambda sent, total: seen.append(sent))

    binary = asyncio.run(run())
    assert seen[-1] == len(content)
    with server.api() as api:
        assert api.get(f"/Binary/{binary['id']}").content == content
