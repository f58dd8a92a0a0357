"""Interoperability with the JavaScript MedplumClient (@medplum/core) driving a real server from node."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.server import ServerProcess, settings_env

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "medplum_interop.mjs"
MEDPLUM_CORE = JS_DIR / "node_modules" / "@medplum" / "core" / "package.json"
MIN_NODE = (20, 19)  # the engines field of @medplum/core 4.5
IN_CI = os.environ.get("CI", "").lower() == "true"

# What the script uploads: 4096 bytes (i * 31) % 256 as a Binary, and this text as an attachment.
ATTACHMENT_TEXT = b"hello from medplum"


def node_or_skip() -> str:
    """The node binary, once node and @medplum/core are both there; else skip (CI=true: fail)."""
    problem = None
    node = shutil.which("node")
    if node is None:
        problem = "node is not installed"
    else:
        version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        found = re.match(r"v(\d+)\.(\d+)", version)
        if not found or (int(found[1]), int(found[2])) < MIN_NODE:
            problem = f"node {version} is older than @medplum/core needs ({MIN_NODE[0]}.{MIN_NODE[1]})"
        elif not MEDPLUM_CORE.exists():
            problem = "@medplum/core is not installed: run `npm install` in tests/js"
    if problem is None:
        assert node is not None
        return node
    if IN_CI:
        pytest.fail(f"{problem}, and CI=true requires it")
    pytest.skip(problem)


def storage_id_and_version(url: str, server: ServerProcess) -> tuple[str, str]:
    """The Binary id and version a signed storage URL names; asserts it is one of ours and signed."""
    assert url.startswith(f"{server.url}/storage/"), url
    split = urlsplit(url)
    assert {"exp", "kid", "sig"} <= set(parse_qs(split.query)), url
    _, _, binary_id, version = split.path.split("/")
    return binary_id, version


@pytest.fixture(scope="module")
def medplum_run(server: ServerProcess) -> dict[str, Any]:
    """Runs the MedplumClient script against the server with a client of its own; its JSON output."""
    node = node_or_skip()
    client = server.create_client("medplum-interop", "system/*.cruds")
    done = subprocess.run([node, str(SCRIPT), server.url, client["client_id"], client["client_secret"]],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stderr}\n--- server log ---\n{server.log()}"
    assert client["client_secret"] not in server.log()
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_medplum_client_crud_search_history_and_transactions(medplum_run: dict[str, Any]) -> None:
    out = medplum_run
    assert out["loggedIn"] is True
    assert (out["patientVersion"], out["updatedVersion"], out["photoVersion"]) == ("1", "2", "3")
    assert out["readFamily"] == "Medplum"
    assert out["searchCount"] == 1
    assert out["historyVersions"] == ["2", "1"]  # newest first
    assert out["vreadActive"] is None  # version 1 predates `active: true`
    assert out["conditionalSameId"] is True
    assert [s.split()[0] for s in out["transactionStatuses"]] == ["201", "201"]
    assert out["transactionReference"] is True  # urn:uuid resolved to the new Patient
    assert out["readAfterDelete"] == "deleted"  # the 410 OperationOutcome reached MedplumClient


def test_medplum_search_resources(medplum_run: dict[str, Any]) -> None:
    out = medplum_run
    assert out["searchByName"] is True
    assert out["searchNobody"] == 0
    assert out["searchRecentDates"] == ["2025-06-01", "2025-03-04"]
    assert (out["searchHeavyTotal"], out["searchHeavyPage"]) == (2, 1)


def test_medplum_binaries_and_attachments(server: ServerProcess, medplum_run: dict[str, Any]) -> None:
    out = medplum_run
    # MedplumClient marks its requests `X-Medplum: extended` (its default), which gets Medplum's `url` on the
    # Binary; without that mode the answer is plain R4.
    assert storage_id_and_version(out["binaryUrl"], server) == (out["binaryId"], "1")
    assert out["binaryRoundTrip"] is True
    assert (out["binaryRewrittenType"], out["binaryRewrittenSize"]) == ("application/x-noise", 4096)
    assert out["plainBinaryKeys"] == ["contentType", "id", "meta", "resourceType"]

    # createAttachment takes the Binary's signed url; the server stores Binary/{id} and signs it again on
    # the way out, on the write answer and on every read.
    attachment_id, _ = storage_id_and_version(out["attachmentUrl"], server)
    for key in ("photoUrlOnWrite", "photoUrlOnRead", "communicationUrl"):
        assert storage_id_and_version(out[key], server) == (attachment_id, "1"), key
    assert out["photoSize"] == len(ATTACHMENT_TEXT)
    assert out["downloadedText"] == ATTACHMENT_TEXT.decode()

    # What is stored, seen through a second node on the same data that does not rewrite urls.
    plain_env = {**server.env, **settings_env(rewrite_attachment_urls=False, job_workers=0)}
    plain = ServerProcess(server.data_dir, plain_env).start()
    try:
        with plain.api() as api:
            patient = api.get(f"/Patient/{out['patientId']}").json()
            photo_v3 = api.get(f"/Patient/{out['patientId']}/_history/3").json()["photo"][0]
            comm = api.get(f"/Communication/{out['communicationId']}").json()
    finally:
        plain.stop()
    sha1 = base64.b64encode(hashlib.sha1(ATTACHMENT_TEXT).digest()).decode()
    for stored in (patient["photo"][0], photo_v3, comm["payload"][0]["contentAttachment"]):
        assert stored["url"] == f"Binary/{attachment_id}"
        assert stored["size"] == len(ATTACHMENT_TEXT) and stored["hash"] == sha1
        assert stored["contentType"] == "text/plain" and stored["title"] == "hello.txt"
