"""Ingestion of external Attachment URLs, through the real server: scheduling, fetching, refusals, status."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fhirvault.config import Settings
from fhirvault.service.ingestion import IngestionRules
from tests.support.origin import CountingListener, OriginServer
from tests.support.server import FhirApi, ServerProcess

Jobs = list[dict[str, Any]]
FHIR_JSON = {"Content-Type": "application/fhir+json"}
LIMIT = 4 * 1024 * 1024

ALLOWED = {"ingest_allow_hosts": "127.0.0.1", "ingest_backoff_seconds": 0.1, "ingest_max_attempts": 3,
           "ingest_read_timeout": 1.0, "max_binary_bytes": LIMIT}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def allowed_server(request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A server that may fetch from 127.0.0.1, as INGEST_ALLOW_HOSTS lets on-premise sources be reached."""
    return server_factory(request.param, **ALLOWED)


@pytest.fixture(scope="module")
def default_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("sqlite")


@pytest.fixture
def origin() -> Iterator[OriginServer]:
    with OriginServer() as server:
        yield server


def status(api: FhirApi, ref: str) -> Jobs:
    r = api.get(f"/{ref}/$ingestion-status")
    assert r.status_code == 200, r.text
    params = r.json()
    assert params["resourceType"] == "Parameters"
    jobs = []
    for p in params.get("parameter", []):
        job: dict[str, Any] = {}
        for part in p["part"]:
            value = [v for k, v in part.items() if k.startswith("value")][0]
            job[part["name"]] = value["reference"] if isinstance(value, dict) else value
        jobs.append(job)
    return jobs


def wait_jobs(api: FhirApi, ref: str, ready: Callable[[Jobs], bool], timeout: float = 60) -> Jobs:
    """Poll the status operation until `ready(jobs)`, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = status(api, ref)
        if ready(jobs):
            return jobs
        assert time.monotonic() < deadline, f"ingestion jobs of {ref} did not settle: {jobs}"
        time.sleep(0.05)


def settled(count: int) -> Callable[[Jobs], bool]:
    return lambda jobs: len(jobs) == count and all(j["state"] in ("done", "failed") for j in jobs)


def create(api: FhirApi, resource: dict[str, Any]) -> dict[str, Any]:
    r = api.post(f"/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def media(url: str, content_type: str | None = "image/png") -> dict[str, Any]:
    content: dict[str, Any] = {"url": url}
    if content_type:
        content["contentType"] = content_type
    return {"resourceType": "Media", "status": "completed", "content": content}


def loopback_name() -> str:
    """A host name other than `localhost` that resolves to loopback addresses only (this machine's name,
    or a usual alias)."""
    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        try:
            infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = {info[4][0] for info in infos}
        if name != "localhost" and addresses and addresses <= {"127.0.0.1", "::1"} | {
                a for a in addresses if a.startswith("127.")}:
            return name
    pytest.skip("no host name other than localhost resolves to loopback here")


# -- which URLs are scheduled --------------------------------------------------------------------
def test_rules_pick_external_urls_only() -> None:
    settings = Settings(public_base_url="https://vault.example", ingest_allow_hosts="files.lan")
    rules = IngestionRules.from_settings(settings)
    assert rules.wants("https://cdn.example/video.mp4")
    assert rules.wants("http://files.lan/scan.pdf")
    assert not rules.wants("http://cdn.example/video.mp4")           # plain http to a host not allowed
    assert not rules.wants("Binary/123")
    assert not rules.wants("https://vault.example/fhir/R4/Binary/123")
    assert not rules.wants("https://vault.example/storage/123/1?sig=abc")
    assert not rules.wants("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0")
    assert not rules.wants(42)
    limited = IngestionRules.from_settings(Settings(ingest_allow_prefixes="https://cdn.example/media/"))
    assert limited.wants("https://cdn.example/media/a.png") and not limited.wants("https://cdn.example/other/a.png")
    assert not IngestionRules.from_settings(Settings(ingest_enabled=False)).wants("https://cdn.example/a.png")


def test_resource_is_stored_as_submitted_and_only_external_urls_get_jobs(allowed_server: ServerProcess) -> None:
    with allowed_server.api() as api:
        doc = create(api, {"resourceType": "DocumentReference", "status": "current", "content": [
            {"attachment": {"url": "Binary/does-not-matter"}},
            {"attachment": {"url": f"{allowed_server.base}/Binary/abc"}},
            {"attachment": {"url": f"{allowed_server.url}/storage/abc/1?sig=x"}},
            {"attachment": {"url": "https://127.0.0.1:1/x.png", "data": "aGk="}},
            {"attachment": {"url": "http://files.other.example/x.png"}},
        ]})
        assert [c["attachment"]["url"] for c in doc["content"]][3:] == [
            "https://127.0.0.1:1/x.png", "http://files.other.example/x.png"]
        assert status(api, f"DocumentReference/{doc['id']}") == []


# -- refusals ------------------------------------------------------------------------------------
def test_internal_addresses_are_refused_without_any_connection(default_server: ServerProcess) -> None:
    """With the default settings, URLs to loopback in every spelling fail at once, and the listeners on
    the very ports named saw no connection. (Other internal ranges: tests/test_ingest_fetcher.py, whose
    guard tests make no network traffic at all.)"""
    with CountingListener("127.0.0.1") as v4, CountingListener("::1") as v6, default_server.api() as api:
        urls = [f"https://127.0.0.1:{v4.port}/a.png", f"https://[::1]:{v6.port}/a.png",
                f"https://localhost:{v4.port}/a.png", f"https://{loopback_name()}:{v4.port}/a.png",
                f"https://[::ffff:127.0.0.1]:{v4.port}/a.png"]
        refs = [f"Media/{create(api, media(url))['id']}" for url in urls]
        for ref, url in zip(refs, urls, strict=True):
            (job,) = wait_jobs(api, ref, settled(1))
            assert job["url"] == url and job["state"] == "failed" and job["attempts"] == 1, job
            assert "internal address" in job["error"] and "INGEST_ALLOW_HOSTS" in job["error"]
            assert api.get(f"/{ref}").json()["content"]["url"] == url  # unchanged
        assert v4.connections() == 0 and v6.connections() == 0


def test_redirect_into_a_forbidden_address_is_refused(allowed_server: ServerProcess, origin: OriginServer) -> None:
    with CountingListener() as trap, allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/to?url=https://localhost:{trap.port}/secret'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "failed" and job["attempts"] == 1
        assert "localhost resolves to 127.0.0.1" in job["error"]
        assert trap.connections() == 0


def test_slow_server_times_out_and_the_timeout_is_recorded(allowed_server: ServerProcess,
                                                           origin: OriginServer) -> None:
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/slow'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "failed" and job["attempts"] == ALLOWED["ingest_max_attempts"]
        assert "timed out" in job["error"]
        assert origin.requests["/slow"] == ALLOWED["ingest_max_attempts"]


def test_oversized_content_is_stopped_early(allowed_server: ServerProcess, origin: OriginServer) -> None:
    big = 50 * LIMIT
    with allowed_server.api() as api:
        announced = f"Media/{create(api, media(f'{origin.url}/file/{big}'))['id']}"
        (job,) = wait_jobs(api, announced, settled(1))
        assert job["state"] == "failed" and job["attempts"] == 1 and "over the limit" in job["error"]
        unannounced = f"Media/{create(api, media(f'{origin.url}/file/{big}?length=no'))['id']}"
        (job,) = wait_jobs(api, unannounced, settled(1))
        assert job["state"] == "failed" and job["attempts"] == 1 and "limit" in job["error"]
    assert origin.sent[f"/file/{big}"] < big // 2
    assert origin.sent[f"/file/{big}?length=no"] < big // 2


def test_status_of_an_unknown_resource_is_404(allowed_server: ServerProcess) -> None:
    with allowed_server.api() as api:
        r = api.get("/Media/no-such-media/$ingestion-status")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_jobs_list_command_shows_failed_jobs(allowed_server: ServerProcess, origin: OriginServer) -> None:
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/status/404?token=secret'))['id']}"
        wait_jobs(api, ref, settled(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")} | allowed_server.env
    out = subprocess.run([sys.executable, "-m", "fhirvault.cli", "jobs", "list", "--state", "failed", "--json",
                          "--data-dir", str(allowed_server.data_dir)],
                         env=env, capture_output=True, text=True, check=True).stdout
    import json
    listed = json.loads(out)
    mine = [j for j in listed["jobs"] if j["subject"] == ref]
    assert len(mine) == 1 and mine[0]["state"] == "failed" and "HTTP 404" in mine[0]["error"]
    assert "secret" not in mine[0]["error"]
    assert listed["counts"]["failed"] >= 1 and all(j["state"] == "failed" for j in listed["jobs"])
    text = subprocess.run([sys.executable, "-m", "fhirvault.cli", "jobs", "list", "--state", "failed",
                           "--data-dir", str(allowed_server.data_dir)],
                          env=env, capture_output=True, text=True, check=True).stdout
    assert ref in text and "HTTP 404" in text and "secret" not in text
