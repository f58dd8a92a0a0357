"""The README's curl flow with the real curl binary: token, raw upload, raw and ranged download, signed URL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import ServerProcess

IN_CI = os.environ.get("CI", "").lower() == "true"


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # lower-case names; the last response's
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Curl:
    """Runs the curl binary, capturing status, headers and body through files as a shell user would."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.calls = 0

    def __call__(self, *args: str) -> CurlResult:
        self.calls += 1
        head = self.workdir / f"head-{self.calls}"
        body = self.workdir / f"body-{self.calls}"
        done = subprocess.run([self.binary, "-sS", "-D", str(head), "-o", str(body), "-w", "%{http_code}", *args],
                              capture_output=True, text=True, timeout=120, cwd=self.workdir)
        assert done.returncode == 0, done.stderr
        headers = {}
        for line in head.read_text(errors="replace").splitlines():
            name, sep, value = line.partition(":")
            if sep and not name.startswith("HTTP/"):
                headers[name.strip().lower()] = value.strip()
        return CurlResult(int(done.stdout), headers, body.read_bytes())


@pytest.fixture
def curl(tmp_path: Path) -> Curl:
    binary = shutil.which("curl")
    if binary is None:
        if IN_CI:
            pytest.fail("curl is not installed, and CI=true requires it")
        pytest.skip("curl is not installed")
    return Curl(binary, tmp_path)


def token_with_curl(curl: Curl, server: ServerProcess) -> str:
    """README: curl -s -u "$ID:$SECRET" -d grant_type=client_credentials {root}/oauth2/token."""
    creds = json.loads((server.data_dir / "admin-client.json").read_text())
    r = curl("-u", f"{creds['client_id']}:{creds['client_secret']}", "-d", "grant_type=client_credentials",
             f"{server.url}/oauth2/token")
    assert r.status == 200, r.body
    answer = r.json()
    assert answer["token_type"].lower() == "bearer"
    token: str = answer["access_token"]
    return token


@pytest.mark.parametrize("size", [3_000, 300_000], ids=["inline", "blob"])
def test_seed_flow_with_curl(server: ServerProcess, curl: Curl, tmp_path: Path, size: int) -> None:
    photo = tmp_path / "photo.jpg"
    data = b"\xff\xd8\xff\xe0" + bytes((i * 131 + i // 7) % 256 for i in range(size - 4))
    photo.write_bytes(data)
    token = token_with_curl(curl, server)
    auth = f"Authorization: Bearer {token}"

    created = curl("-X", "POST", "-H", "Content-Type: image/jpeg", "-H", auth, "--data-binary", f"@{photo}",
                   f"{server.base}/Binary")
    assert created.status == 201, created.body
    binary = created.json()
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "image/jpeg" and "data" not in binary
    assert created.headers["location"].startswith(f"{server.base}/Binary/{binary['id']}")

    raw = curl("-H", auth, f"{server.base}/Binary/{binary['id']}")
    assert raw.status == 200 and raw.body == data
    assert raw.headers["content-type"].startswith("image/jpeg")
    assert raw.headers["content-length"] == str(size)

    ranged = curl("-r", "0-99", "-H", auth, f"{server.base}/Binary/{binary['id']}")
    assert ranged.status == 206 and ranged.body == data[:100]
    assert ranged.headers["content-range"] == f"bytes 0-99/{size}"

    # The signed URL from the upload answer's Link header needs no Authorization header, whole or in part.
    assert "url" not in binary
    url = created.headers["link"].split(">", 1)[0].lstrip("<")
    assert url.startswith(f"{server.url}/storage/{binary['id']}/")
    signed = curl(url)
    assert signed.status == 200 and signed.body == data
    tail = curl("-r", f"{size - 10}-", url)
    assert tail.status == 206 and tail.body == data[-10:]

    # curl -o straight to a file: byte-identical to what was uploaded.
    copy = tmp_path / "copy.jpg"
    done = subprocess.run([curl.binary, "-sS", "-f", "-o", str(copy), url], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert copy.read_bytes() == data

    # Without a token the FHIR API refuses, and says how to authenticate.
    refused = curl(f"{server.base}/Binary/{binary['id']}")
    assert refused.status == 401 and refused.headers["www-authenticate"].startswith("Bearer")


def test_readme_examples_with_curl(server: ServerProcess, curl: Curl, tmp_path: Path) -> None:
    """The Running and Binary sections' commands, as written there."""
    token = token_with_curl(curl, server)
    auth = f"Authorization: Bearer {token}"
    patient = curl("-X", "POST", "-H", auth, "-H", "Content-Type: application/fhir+json",
                   "-d", '{"resourceType":"Patient"}', f"{server.base}/Patient")
    assert patient.status == 201, patient.body
    context = f"Patient/{patient.json()['id']}"

    scan = tmp_path / "scan.jpg"
    scan.write_bytes(b"\xff\xd8\xff\xe0 a scan " * 100)
    binary = curl("-X", "POST", "-H", "Content-Type: image/jpeg", "-H", f"X-Security-Context: {context}",
                  "-H", auth, "--data-binary", f"@{scan.name}", f"{server.base}/Binary?_filename=scan.jpg")
    assert binary.status == 201, binary.body
    assert binary.json()["securityContext"] == {"reference": context}

    raw = curl("-H", auth, f"{server.base}/Binary/{binary.json()['id']}")
    assert raw.status == 200 and raw.body == scan.read_bytes()
    assert raw.headers["x-security-context"] == context
    assert "scan.jpg" in raw.headers["content-disposition"]
