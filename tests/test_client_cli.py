"""The client command line (`fhirvault upload/download/get/search`) through subprocesses: upload and
download round trip, connection from options, environment and profile file, errors on stderr."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from tests.support.clients import admin_kwargs
from tests.support.server import ServerProcess
from tests.support.standin import StandIn

CONTENT = os.urandom(700_000)


def fhirvault(*args: str, env: dict[str, str] | None = None,
              home: Path | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    if home is not None:
        clean["HOME"] = str(home)
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "fhirvault.cli", *args], capture_output=True, text=True,
                          env=clean, timeout=120)


def test_upload_and_download_round_trip(standin: StandIn, tmp_path: Path) -> None:
    src = tmp_path / "scan.jpg"
    src.write_bytes(CONTENT)
    env = {"FHIRVAULT_URL": standin.base, "FHIRVAULT_CLIENT_ID": standin.client_id,
           "FHIRVAULT_CLIENT_SECRET": standin.client_secret}
    up = fhirvault("upload", str(src), "--security-context", "Patient/9", "--json", env=env)
    assert up.returncode == 0, up.stderr
    binary = json.loads(up.stdout)     # stdout is the Binary JSON only: no progress bar off a terminal
    assert binary["resourceType"] == "Binary" and binary["contentType"] == "image/jpeg"
    post = standin.requests_to("/fhir/R4/Binary")[-1]
    assert post.headers["x-security-context"] == "Patient/9" and post.query["_filename"] == ["scan.jpg"]
    assert post.body_size == len(CONTENT)

    out = tmp_path / "back.jpg"
    down = fhirvault("download", f"Binary/{binary['id']}", "-o", str(out), env=env)
    assert down.returncode == 0, down.stderr
    assert out.read_bytes() == CONTENT
    assert standin.requests_to(f"/fhir/R4/Binary/{binary['id']}")[-1].headers["authorization"].startswith("Bearer ")

    # Through the signed URL, to standard output, with no token sent.
    piped = subprocess.run([sys.executable, "-m", "fhirvault.cli", "download", binary["url"]],
                           capture_output=True, env={**os.environ, **env}, timeout=120)
    assert piped.returncode == 0 and piped.stdout == CONTENT
    assert "authorization" not in standin.requests_to("/storage/")[-1].headers


def test_upload_options_and_plain_output(standin: StandIn, tmp_path: Path) -> None:
    src = tmp_path / "data"
    src.write_bytes(b"hello")
    up = fhirvault("upload", str(src), "--content-type", "text/plain", "--filename", "hello.txt",
                   "--url", standin.base, "--client-id", standin.client_id,
                   "--client-secret", standin.client_secret)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip().startswith("Binary/")
    post = standin.requests_to("/fhir/R4/Binary")[-1]
    assert post.headers["content-type"] == "text/plain" and post.query["_filename"] == ["hello.txt"]


def test_profile_file_gives_the_connection(standin: StandIn, tmp_path: Path) -> None:
    config = tmp_path / ".config" / "fhirvault" / "client.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[default]\nurl = "http://127.0.0.1:9/nowhere"\n\n[stand]\nurl = "{standin.base}"\n'
                      f'client_id = "{standin.client_id}"\nclient_secret = "{standin.client_secret}"\n')
    src = tmp_path / "x.bin"
    src.write_bytes(b"profile")
    up = fhirvault("upload", str(src), "--profile", "stand", home=tmp_path)
    assert up.returncode == 0, up.stderr
    assert standin.requests_to("/fhir/R4/Binary")[-1].body_size == 7
    missing = fhirvault("upload", str(src), "--profile", "nope", home=tmp_path)
    assert missing.returncode == 2 and "no profile [nope]" in missing.stderr


def test_attach_to_adds_the_attachment_to_the_resource(standin: StandIn, tmp_path: Path) -> None:
    standin.resources["Patient/p1"] = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
                                       "photo": [{"url": "Binary/old"}]}
    src = tmp_path / "face.png"
    src.write_bytes(b"\x89PNG fake")
    env = {"FHIRVAULT_URL": standin.base, "FHIRVAULT_CLIENT_ID": standin.client_id,
           "FHIRVAULT_CLIENT_SECRET": standin.client_secret}
    up = fhirvault("upload", str(src), "--attach-to", "Patient/p1", "--element", "photo", "--json", env=env)
    assert up.returncode == 0, up.stderr
    binary = json.loads(up.stdout)
    put = standin.requests_to("/fhir/R4/Patient/p1")[-1]
    assert put.method == "PUT" and put.headers["if-match"] == 'W/"3"'
    photos = standin.resources["Patient/p1"]["photo"]
    assert photos[0] == {"url": "Binary/old"}
    assert photos[1] == {"contentType": "image/png", "url": f"Binary/{binary['id']}", "title": "face.png",
                         "size": 9, "hash": standin.blobs[binary["id"]].sha1_b64}


def connection_env(server: ServerProcess) -> dict[str, str]:
    creds = admin_kwargs(server)
    env = {"FHIRVAULT_URL": server.base}
    if creds:
        env.update({"FHIRVAULT_CLIENT_ID": creds["client_id"], "FHIRVAULT_CLIENT_SECRET": creds["client_secret"]})
    return env


def fhirvault_ok(*args: str, env: dict[str, str]) -> str:
    done = fhirvault(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_get_and_search_against_the_server(server: ServerProcess) -> None:
    env = connection_env(server)
    with server.api() as api:
        ids = [api.post("/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": "urn:cli", "value": "v1"}]}).json()["id"] for _ in range(3)]
    got = json.loads(fhirvault_ok("get", f"Patient/{ids[0]}", env=env))
    assert got["id"] == ids[0] and got["resourceType"] == "Patient"
    assert json.loads(fhirvault_ok("get", f"Patient/{ids[0]}/_history/1", env=env))["meta"]["versionId"] == "1"
    lines = fhirvault_ok("search", "Patient", "identifier=urn:cli|v1", "_count=1", env=env).splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ids)


def test_errors_print_the_outcome_and_exit_non_zero(server: ServerProcess, tmp_path: Path) -> None:
    env = connection_env(server)
    missing = fhirvault("get", "Patient/not-there", env=env)
    assert missing.returncode == 1 and missing.stdout == ""
    assert "Patient/not-there is not known" in missing.stderr and "404" in missing.stderr
    no_url = fhirvault("get", "Patient/x", home=tmp_path)
    assert no_url.returncode == 2 and "FHIRVAULT_URL" in no_url.stderr
    bad_param = fhirvault("search", "Patient", "novalue", env=env)
    assert bad_param.returncode == 2 and "key=value" in bad_param.stderr


def test_progress_bar_shows_on_a_terminal(standin: StandIn, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fhirvault.cli", "upload", str(src), "--url", standin.base,
                             "--client-id", standin.client_id, "--client-secret", standin.client_secret],
                            stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:   # the terminal closed: the process is done with it
            break
        if not data:
            break
        seen += data
    os.close(controller)
    assert proc.wait(timeout=60) == 0
    text = seen.decode("utf-8", "replace")
    assert "upload big.bin" in text and "3.0/3.0 MB" in text and "Binary/" in text
    assert re.search(r"[0-9.]+ [kMG]?B/s", text)     # the speed column
