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
from fhirvault.service.ingestion import FAILED_REASON, IngestionRules
from tests.support.binary import signed_url_of
from tests.support.origin import CountingListener, OriginServer, content_chunks, sha1_b64
from tests.support.server import FhirApi, ServerProcess, settings_env, status_bytes

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


def job_log(server: ServerProcess, job_id: str) -> str:
    """The server log's lines about one job (where the detail of a failure goes)."""
    text = server.log_path.read_text(errors="replace")
    return "\n".join(line for line in text.splitlines() if f"job {job_id} " in line)


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
        created = api.post("/Binary", content=b"ours", headers={"Content-Type": "text/plain"})
        ours = created.json()
        doc = create(api, {"resourceType": "DocumentReference", "status": "current", "content": [
            {"attachment": {"url": f"Binary/{ours['id']}"}},
            {"attachment": {"url": f"{allowed_server.base}/Binary/{ours['id']}"}},
            {"attachment": {"url": signed_url_of(created)}},
            {"attachment": {"url": "https://127.0.0.1:1/x.png", "contentType": "image/png", "data": "aGk="}},
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
            assert job["error"] == FAILED_REASON  # the API caller learns nothing about the network
            assert "internal address" in job_log(default_server, job["job"])
            assert api.get(f"/{ref}").json()["content"]["url"] == url  # unchanged
        assert v4.connections() == 0 and v6.connections() == 0


def test_redirect_into_a_forbidden_address_is_refused(allowed_server: ServerProcess, origin: OriginServer) -> None:
    with CountingListener() as trap, allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/to?url=https://localhost:{trap.port}/secret'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "failed" and job["attempts"] == 1
        assert job["error"] == FAILED_REASON and "127.0.0.1" not in job["error"]
        assert "localhost resolves to 127.0.0.1" in job_log(allowed_server, job["job"])
        assert trap.connections() == 0


def test_slow_server_times_out_and_the_timeout_is_recorded(allowed_server: ServerProcess,
                                                           origin: OriginServer) -> None:
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/slow'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "failed" and job["attempts"] == ALLOWED["ingest_max_attempts"]
        assert job["error"] == FAILED_REASON and "timed out" in job_log(allowed_server, job["job"])
        assert origin.requests["/slow"] == ALLOWED["ingest_max_attempts"]


def test_oversized_content_is_stopped_early(allowed_server: ServerProcess, origin: OriginServer) -> None:
    big = 50 * LIMIT
    with allowed_server.api() as api:
        announced = f"Media/{create(api, media(f'{origin.url}/file/{big}'))['id']}"
        (job,) = wait_jobs(api, announced, settled(1))
        assert job["state"] == "failed" and job["attempts"] == 1
        assert "over the limit" in job_log(allowed_server, job["job"])
        unannounced = f"Media/{create(api, media(f'{origin.url}/file/{big}?length=no'))['id']}"
        (job,) = wait_jobs(api, unannounced, settled(1))
        assert job["state"] == "failed" and job["attempts"] == 1 and "limit" in job_log(allowed_server, job["job"])
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


# -- content that lands --------------------------------------------------------------------------
def binary_bytes(api: FhirApi, ref: str) -> bytes:
    r = api.get(f"/{ref}", headers={"Accept": "application/octet-stream"})
    assert r.status_code == 200, r.text
    return r.content


def binary_resource(api: FhirApi, ref: str) -> dict[str, Any]:
    r = api.get(f"/{ref}", headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_normal_file_lands_as_a_binary(allowed_server: ServerProcess, origin: OriginServer) -> None:
    size = 300_000
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/file/{size}?type=image/jpeg&seed=1'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "done" and job["attempts"] == 1, job
        current = api.get(f"/{ref}").json()
        attachment = current["content"]
        assert attachment["size"] == size and attachment["hash"] == sha1_b64(size, 1)
        assert attachment["contentType"] == "image/jpeg"  # the response's, over the submitted image/png
        binary_ref = job["binary"]
        assert current["meta"]["versionId"] == "2"
        assert _stored_url(api, ref) == binary_ref
        assert binary_bytes(api, binary_ref) == b"".join(content_chunks(size, 1))
        assert binary_resource(api, binary_ref)["securityContext"] == {"reference": ref}


def _stored_url(api: FhirApi, ref: str) -> str:
    """The Attachment url as stored (reads may show it as a signed URL; history shows the version's own)."""
    current = api.get(f"/{ref}").json()
    url: str = current["content"]["url"]
    if url.startswith("Binary/"):
        return url
    binary_id = url.split("/storage/", 1)[1].split("/")[0] if "/storage/" in url else url.rsplit("/", 1)[-1]
    return f"Binary/{binary_id}"


def test_content_type_falls_back_to_the_attachments(allowed_server: ServerProcess, origin: OriginServer) -> None:
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/file/1000', content_type='application/dicom'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "done", job
        assert api.get(f"/{ref}").json()["content"]["contentType"] == "application/dicom"


def test_redirect_chain_is_followed(allowed_server: ServerProcess, origin: OriginServer) -> None:
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/redirect/3/file/5000?type=text/plain'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "done", job
        assert api.get(f"/{ref}").json()["content"]["size"] == 5000
        assert origin.requests["/file/5000"] == 1 and origin.requests["/redirect/1/file/5000"] == 1


def test_server_error_then_success_is_retried(allowed_server: ServerProcess, origin: OriginServer) -> None:
    with allowed_server.api() as api:
        ref = f"Media/{create(api, media(f'{origin.url}/flaky/once/2000'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "done" and job["attempts"] == 2, job
        assert "HTTP 500" in job_log(allowed_server, job["job"])  # the failed attempt's error is logged
        assert origin.flaky["once"] == 2
        assert api.get(f"/{ref}").json()["content"]["hash"] == sha1_b64(2000)


def test_three_urls_in_one_resource_all_land(allowed_server: ServerProcess, origin: OriginServer) -> None:
    sizes = {1: 10_000, 2: 200_000, 3: 3_000}
    with allowed_server.api() as api:
        doc = create(api, {"resourceType": "DocumentReference", "status": "current", "content": [
            {"attachment": {"url": f"{origin.url}/file/{size}?seed={seed}&type=application/pdf"}}
            for seed, size in sizes.items()]})
        ref = f"DocumentReference/{doc['id']}"
        jobs = wait_jobs(api, ref, settled(3))
        assert all(j["state"] == "done" for j in jobs), jobs
        current = api.get(f"/{ref}").json()
        for content, (seed, size) in zip(current["content"], sizes.items(), strict=True):
            attachment = content["attachment"]
            assert attachment["size"] == size and attachment["hash"] == sha1_b64(size, seed)
        assert current["meta"]["versionId"] == "4"  # one update per URL, none lost
        assert len({j["binary"] for j in jobs}) == 3


def test_url_edited_away_before_the_job_lands_is_not_applied(allowed_server: ServerProcess,
                                                             origin: OriginServer) -> None:
    path = "/gate/edited-away/1000"
    with allowed_server.api() as api:
        created = create(api, media(f"{origin.url}{path}"))
        ref = f"Media/{created['id']}"
        wait_until(lambda: origin.requests[path] >= 1)
        edited = {**created, "content": {"contentType": "text/plain", "data": "aGk="}}
        assert api.put(f"/{ref}", json=edited, headers=FHIR_JSON).status_code == 200
        origin.release("edited-away")
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "done" and "not applied" in job["outcome"], job
        current = api.get(f"/{ref}").json()
        assert current["meta"]["versionId"] == "2" and "url" not in current["content"]


def test_newer_edit_during_the_fetch_is_kept(allowed_server: ServerProcess, origin: OriginServer) -> None:
    path = "/gate/concurrent/1000"
    with allowed_server.api() as api:
        created = create(api, media(f"{origin.url}{path}"))
        ref = f"Media/{created['id']}"
        wait_until(lambda: origin.requests[path] >= 1)
        edited = {**created, "status": "entered-in-error"}
        assert api.put(f"/{ref}", json=edited, headers=FHIR_JSON).status_code == 200
        origin.release("concurrent")
        (job,) = wait_jobs(api, ref, settled(1))
        assert job["state"] == "done", job
        current = api.get(f"/{ref}").json()
        assert current["status"] == "entered-in-error" and current["content"]["size"] == 1000
        assert current["meta"]["versionId"] == "3"


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# -- large content, constant memory ----------------------------------------------------------------
def test_200_mib_file_with_flat_server_memory(server_factory: Callable[..., ServerProcess],
                                             origin: OriginServer) -> None:
    size = 200 * 1024 * 1024
    server = server_factory("sqlite", ingest_allow_hosts="127.0.0.1", max_binary_bytes=size + 1)
    with server.api() as api:
        warm = f"Media/{create(api, media(f'{origin.url}/file/300000'))['id']}"
        wait_jobs(api, warm, settled(1))
        baseline = server.rss_bytes()
        started = time.monotonic()
        ref = f"Media/{create(api, media(f'{origin.url}/file/{size}?seed=7&type=video/mp4'))['id']}"
        (job,) = wait_jobs(api, ref, settled(1), timeout=300)
        seconds = time.monotonic() - started
        peak = _peak_rss(server)
        assert job["state"] == "done", job
        attachment = api.get(f"/{ref}").json()["content"]
        assert attachment["size"] == size and attachment["hash"] == sha1_b64(size, 7)
    growth = peak - baseline
    print(f"\n200 MiB ingestion: {seconds:.1f}s ({200 / seconds:.0f} MiB/s, status polling included); "
          f"server RSS baseline {baseline >> 20} MiB, peak {peak >> 20} MiB")
    assert growth < 64 * 1024 * 1024, f"server memory grew by {growth >> 20} MiB for a 200 MiB file"


def _peak_rss(server: ServerProcess) -> int:
    """The sum of the server processes' high-water marks (at least the peak of their sum)."""
    return status_bytes(server.pids(), "VmHWM")


# -- durability ----------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def database_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
    else:
        from tests.conftest import require_postgres
        from tests.support.server import postgres_database
        require_postgres()
        with postgres_database() as url:
            yield settings_env(database_url=url)


def test_pending_job_survives_a_restart(tmp_path: Any, origin: OriginServer, database_env: dict[str, str]) -> None:
    env = database_env | settings_env(ingest_allow_hosts="127.0.0.1", job_workers=0)
    server = ServerProcess(tmp_path / "data", env).start()
    try:
        with server.api() as api:
            ref = f"Media/{create(api, media(f'{origin.url}/file/4000'))['id']}"
            assert [j["state"] for j in status(api, ref)] == ["pending"]
    finally:
        server.stop()
    server.env = env | settings_env(job_workers=1)
    server.start()
    try:
        with server.api() as api:
            (job,) = wait_jobs(api, ref, settled(1))
            assert job["state"] == "done" and api.get(f"/{ref}").json()["content"]["size"] == 4000
    finally:
        server.stop()


def test_job_of_a_killed_server_is_run_again_after_its_lease(tmp_path: Any, origin: OriginServer) -> None:
    env = settings_env(ingest_allow_hosts="127.0.0.1", job_lease_seconds=1)
    server = ServerProcess(tmp_path / "data", env).start()
    path = "/gate/killed/3000"
    try:
        with server.api() as api:
            ref = f"Media/{create(api, media(f'{origin.url}{path}'))['id']}"
        wait_until(lambda: origin.requests[path] == 1)
        assert server.proc is not None
        server.proc.kill()  # mid-fetch, no chance to hand the job back
        server.proc.wait()
        server.proc = None
        server.start()
        wait_until(lambda: origin.requests[path] == 2)  # claimed again once the lease ran out
        origin.release("killed")
        with server.api() as api:
            (job,) = wait_jobs(api, ref, settled(1))
            assert job["state"] == "done" and job["attempts"] == 2, job
    finally:
        server.stop()


def test_worker_command_runs_jobs_for_servers_without_workers(tmp_path: Any, origin: OriginServer) -> None:
    env = settings_env(ingest_allow_hosts="127.0.0.1", job_workers=0)
    server = ServerProcess(tmp_path / "data", env).start()
    worker = None
    try:
        with server.api() as api:
            ref = f"Media/{create(api, media(f'{origin.url}/file/2500'))['id']}"
            assert [j["state"] for j in status(api, ref)] == ["pending"]
            full_env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")} | env
            with open(tmp_path / "worker.log", "wb") as log:
                worker = subprocess.Popen([sys.executable, "-m", "fhirvault.cli", "worker",
                                           "--data-dir", str(server.data_dir)], env=full_env,
                                          stdout=log, stderr=subprocess.STDOUT)
            (job,) = wait_jobs(api, ref, settled(1))
            assert job["state"] == "done" and api.get(f"/{ref}").json()["content"]["size"] == 2500
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        server.stop()
