"""The command line as a newcomer meets it, through subprocesses against real servers: `upload --attach-to`
checks before it sends and leaves no unreported Binary, `download | head` ends quietly, connection
problems name the URL, and startup problems are one clear line with the banner only once listening."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.binary import binary_count, pseudo_random
from tests.support.server import ServerProcess, free_port

BIG = pseudo_random(3 * 1024 * 1024, seed=9)  # more than a pipe holds


def fhirvault(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
              ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "fhirvault.cli", *args], capture_output=True, text=True,
                          env=clean, timeout=120, cwd=cwd)


def connection(server: ServerProcess, client: dict[str, str] | None = None) -> dict[str, str]:
    creds = client or json.loads((server.data_dir / "admin-client.json").read_text())
    return {"FHIRVAULT_URL": server.base, "FHIRVAULT_CLIENT_ID": creds["client_id"],
            "FHIRVAULT_CLIENT_SECRET": creds["client_secret"], "HOME": str(server.data_dir)}


def new_patient(server: ServerProcess) -> str:
    with server.api() as api:
        return str(api.post("/Patient", json={"resourceType": "Patient"}).json()["id"])


# -- 9. upload --attach-to ------------------------------------------------------------------------------
def test_attach_to_a_missing_patient_uploads_nothing(server: ServerProcess, tmp_path: Path) -> None:
    """The example: `upload face.jpg --attach-to Patient/123` where the Patient does not exist."""
    face = tmp_path / "face.jpg"
    face.write_bytes(b"\xff\xd8\xff\xe0 face")
    before = binary_count(server)
    done = fhirvault("upload", str(face), "--attach-to", "Patient/does-not-exist", "--element", "photo",
                     env=connection(server))
    assert done.returncode == 1 and "404" in done.stderr and "Patient/does-not-exist" in done.stderr
    assert done.stdout == "" and binary_count(server) == before


def test_attach_to_checks_first_shares_the_patient_context_and_cleans_up(server: ServerProcess,
                                                                         tmp_path: Path) -> None:
    """The rule: a wrong element is refused before anything is sent (even with no server to send to); a
    successful attach gives the Binary the target as securityContext, so the patient's own clients read
    it; an attach that fails after the upload deletes the Binary and names it."""
    face = tmp_path / "face.jpg"
    face.write_bytes(b"\xff\xd8\xff\xe0 face")
    nowhere = {**connection(server), "FHIRVAULT_URL": f"http://127.0.0.1:{free_port()}/fhir/R4"}
    for element, listed in (("phtoo", "photo"), ("name", "photo")):
        done = fhirvault("upload", str(face), "--attach-to", "Patient/1", "--element", element, env=nowhere)
        assert done.returncode == 2 and f"--element '{element}'" in done.stderr and listed in done.stderr
    done = fhirvault("upload", str(face), "--attach-to", "Media/1", "--element", "photo", env=nowhere)
    assert done.returncode == 2 and "its Attachment elements: content" in done.stderr
    done = fhirvault("upload", str(face), "--attach-to", "Patient", env=nowhere)
    assert done.returncode == 2 and "Patient/123" in done.stderr

    patient_id = new_patient(server)
    done = fhirvault("upload", str(face), "--attach-to", f"Patient/{patient_id}", env=connection(server))
    assert done.returncode == 0, done.stderr
    binary_ref = done.stdout.strip()
    own = server.create_client("own-patient", "patient/*.rs", patient=f"Patient/{patient_id}")
    with httpx.Client(headers={"Authorization": f"Bearer {server.token(own['client_id'], own['client_secret'])}"}) \
            as mine:
        binary = mine.get(f"{server.base}/{binary_ref}", headers={"Accept": "application/fhir+json"})
        assert binary.status_code == 200 and binary.json()["securityContext"] == {"reference": f"Patient/{patient_id}"}
        photo = mine.get(f"{server.base}/Patient/{patient_id}").json()["photo"][0]
        assert httpx.get(photo["url"]).content == face.read_bytes()

    # May upload Binaries, read Patients, but not change them: the attach fails after the upload.
    limited = server.create_client("no-patient-update",
                                   "system/Binary.cruds system/Patient.rs system/Observation.cruds")
    before = binary_count(server)
    done = fhirvault("upload", str(face), "--attach-to", f"Patient/{patient_id}", "--security-context",
                     "Observation/any", env=connection(server, limited))
    assert done.returncode == 1 and "403" in done.stderr
    assert "was deleted" in done.stderr
    deleted = done.stderr.split("the uploaded ", 1)[1].split(" ", 1)[0]
    with server.api() as api:
        assert api.get(f"/{deleted}").status_code == 410
    assert binary_count(server) == before + 2  # the version created and its deletion


# -- 10. download into a closed pipe, connection problems ---------------------------------------------
def test_download_into_head_exits_quietly(server: ServerProcess, tmp_path: Path) -> None:
    """The example: `fhirvault download ... | head -c 10`, under `set -o pipefail`."""
    with server.api() as api:
        binary_id = api.post("/Binary", content=BIG, headers={"Content-Type": "application/octet-stream"}).json()["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env.update(connection(server))
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m fhirvault.cli download "
                                         f"Binary/{binary_id} | head -c 10"],
                          capture_output=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout == BIG[:10]
    assert done.stderr == b""


def test_connection_problems_name_the_url_and_the_fhir_base(server: ServerProcess) -> None:
    port = free_port()
    refused = fhirvault("get", "Patient/1", env={**connection(server), "FHIRVAULT_URL": f"http://127.0.0.1:{port}/fhir/R4"})
    assert refused.returncode == 1 and f"http://127.0.0.1:{port}/" in refused.stderr
    assert "cannot connect" in refused.stderr and "Traceback" not in refused.stderr
    no_base = fhirvault("get", "Patient/1", env={**connection(server), "FHIRVAULT_URL": server.url})
    assert no_base.returncode == 1 and "hint:" in no_base.stderr and f"{server.url}/fhir/R4" in no_base.stderr
    assert "hint:" not in fhirvault("get", "Patient/nope", env=connection(server)).stderr


# -- 11. startup problems -------------------------------------------------------------------------------
def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return fhirvault("serve", "--data-dir", str(tmp_path / "data"), *args, env=env, cwd=tmp_path)


def assert_one_clear_line(done: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "serving FHIR R4" not in done.stdout, "the banner must wait until the server listens"


def test_missing_config_file_and_invalid_setting(tmp_path: Path) -> None:
    """The examples: a missing `--config` file and `STORAGE_MODE=s4` (from the environment or the file)."""
    assert_one_clear_line(serve(tmp_path, "--config", str(tmp_path / "nope.toml")), 2, "nope.toml", "--config")
    assert_one_clear_line(serve(tmp_path, env={"FHIRVAULT_STORAGE_MODE": "s4"}), 2,
                          "STORAGE_MODE", "'s4'", "filesystem", "FHIRVAULT_STORAGE_MODE")
    config = tmp_path / "fhirvault.toml"
    config.write_text('storage_mode = "s4"\n')
    assert_one_clear_line(serve(tmp_path, "--config", str(config)), 2, "STORAGE_MODE", "'s4'")
    config.write_text("storage_mode = \n")
    assert_one_clear_line(serve(tmp_path, "--config", str(config)), 2, "fhirvault.toml", "TOML")
    assert_one_clear_line(serve(tmp_path, "--port", "80000"), 2, "PORT")


def test_unreachable_database_and_port_in_use(tmp_path: Path) -> None:
    """The examples: an unreachable PostgreSQL and a port in use; neither prints the banner."""
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/fhirvault"
    assert_one_clear_line(serve(tmp_path, env={"FHIRVAULT_DATABASE_URL": dead}), 1,
                          "cannot open the database", "DATABASE_URL")
    mysql = serve(tmp_path, env={"FHIRVAULT_DATABASE_URL": "mysql://nobody:hush@127.0.0.1/x"})
    assert_one_clear_line(mysql, 2, "DATABASE_URL", "postgresql+psycopg://")
    assert "hush" not in mysql.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        assert_one_clear_line(serve(fresh, "--port", str(port)), 1, f"port {port}", "already in use", "--port")
        # the failed first start made no admin client: the start that does still shows its secret once
        assert not (fresh / "data" / "admin-client.json").exists()


def test_banner_only_once_the_server_listens(tmp_path: Path) -> None:
    """The rule: when the banner is printed, the port already accepts connections."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    proc = subprocess.Popen([sys.executable, "-m", "fhirvault.cli", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path / "data")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline().decode()
        assert f"127.0.0.1:{port}/fhir/R4" in banner
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # no retry: it must listen already
        deadline = time.monotonic() + 60
        while True:  # and it answers, once the application has started
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/fhir/R4/metadata", timeout=5).status_code == 200
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_commands_share_the_clear_errors(tmp_path: Path) -> None:
    """`clients create` on an unreachable database: the same one line, not a traceback."""
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/fhirvault"
    done = fhirvault("clients", "create", "--name", "x", "--scope", "system/*.rs", "--data-dir", str(tmp_path),
                     env={"FHIRVAULT_DATABASE_URL": dead})
    assert done.returncode == 1 and "cannot open the database" in done.stderr and "Traceback" not in done.stderr
