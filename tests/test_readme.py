"""The README's examples run as written: every shell block in order (curl, jq and the fhirvault command
line), then the Python example, against a real server started in the directory they run in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.binary import pseudo_random
from tests.support.server import ServerProcess

IN_CI = os.environ.get("CI", "").lower() == "true"
README = Path(__file__).parent.parent / "README.md"
README_ROOT = "http://127.0.0.1:8000"
SKIP_MARK = "<!-- not run by tests/test_readme.py"
# The files the examples upload ("any files will do"), made up here.
EXAMPLE_FILES = {
    "scan.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 400,  # above INLINE_MAX_BYTES
    "scan.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    "photo.jpg": b"\xff\xd8\xff\xe0 photo",
    "face.jpg": b"\xff\xd8\xff\xe0 face" * 50,
    "noise.bin": pseudo_random(3 * 1024 * 1024, seed=5),  # larger than a pipe holds: `| head` closes it early
    "scan.pdf": b"%PDF-1.4 scan",
    "letter.pdf": b"%PDF-1.4 letter",
}


def blocks(language: str) -> list[str]:
    """The README's fenced blocks in `language`, in order, without those whose preceding line marks them
    as not run here."""
    text = README.read_text()
    found = []
    for m in re.finditer(rf"```{language}\n(.*?)```", text, flags=re.S):
        preceding = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if not preceding.startswith(SKIP_MARK):
            found.append(m.group(1))
    return found


def require(tool: str) -> None:
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} is not installed, and CI=true requires it")
        pytest.skip(f"{tool} is not installed")


@pytest.fixture
def workdir(server: ServerProcess, tmp_path: Path) -> Path:
    """A directory laid out as where `fhirvault serve` was started: fhirvault-data/ and the example files."""
    (tmp_path / "fhirvault-data").symlink_to(server.data_dir)
    for name, data in EXAMPLE_FILES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_readme_shell_blocks_run_as_written(server: ServerProcess, workdir: Path) -> None:
    """Every shell block, run by bash in order against the server (only its address changed), with the
    `fhirvault` command on PATH as the README says; any failing command, HTTP error or failing pipe stops
    the run. The downloads must be the uploaded bytes."""
    require("curl")
    require("jq")
    shell = blocks("sh")
    assert len(shell) >= 4, "the README lost its shell examples"
    assert any("fhirvault upload" in b for b in shell) and any("curl " in b for b in shell)
    script = "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\n"
    script += "\n".join(shell).replace(README_ROOT, server.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(workdir)  # no client profile of the user's
    done = subprocess.run(["bash", "-c", script], cwd=workdir, capture_output=True, timeout=600, env=env)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert b"Broken pipe" not in done.stderr and b"Traceback" not in done.stderr, done.stderr[-3000:]
    scan = EXAMPLE_FILES["scan.jpg"]
    assert (workdir / "copy.jpg").read_bytes() == scan
    assert (workdir / "part.jpg").read_bytes() == scan[:100]  # the `-r 0-99` download
    assert b"206\n" in done.stdout
    assert (workdir / "scan-copy.jpg").read_bytes() == scan
    assert (workdir / "face-copy.jpg").read_bytes() == EXAMPLE_FILES["face.jpg"]
    assert (workdir / "noise-copy.bin").read_bytes() == EXAMPLE_FILES["noise.bin"]
    binary = json.loads((workdir / "binary.json").read_text())
    assert binary["securityContext"]["reference"].startswith("Patient/") and "url" not in binary


def test_readme_python_example_runs_as_written(server: ServerProcess, workdir: Path) -> None:
    """The Python client example, run by this interpreter in the same directory (only the address changed)."""
    (python,) = blocks("python")
    code = python.replace(README_ROOT, server.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "noise-copy.bin").read_bytes() == b"\x00\x01..."[:1024]
