"""A real clamd (Debian's clamav-daemon) on a private Unix socket or TCP port, with a signature database the
test writes itself (no signature download is possible here): the MD5 of a generated test file as a `.hdb`
hash signature, and the EICAR test string as an `.ndb` body signature."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.server import free_port

IN_CI = os.environ.get("CI", "").lower() == "true"
# The EICAR anti-malware test file (https://www.eicar.org), split so no scanner flags this source file.
EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
EICAR_SIGNATURE = "Fhirvault.Test.EICAR"
TEST_FILE_SIGNATURE = "Fhirvault.Test.HashFile"


def malware_sample() -> bytes:
    """The generated 'malware' the hash signature names: 200 KiB, deterministic, above INLINE_MAX_BYTES."""
    seed = hashlib.sha256(b"fhirvault scan test file").digest()
    out = bytearray()
    while len(out) < 200 * 1024:
        seed = hashlib.sha256(seed).digest()
        out += seed
    return bytes(out[:200 * 1024])


def clamd_binary() -> str | None:
    return shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd",) if os.access(p, os.X_OK)), None)


class Clamd:
    """One clamd process with its own config, database directory, socket, port and log."""

    def __init__(self, work_dir: Path, *, stream_max_bytes: int = 25 * 1024 * 1024) -> None:
        self.work_dir = work_dir
        self.db_dir = work_dir / "db"
        self.socket_path = work_dir / "clamd.sock"
        self.port = free_port()
        self.stream_max_bytes = stream_max_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / "clamd.log"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def write_database(self) -> None:
        self.db_dir.mkdir(parents=True, exist_ok=True)
        data = malware_sample()
        (self.db_dir / "fhirvault-test.hdb").write_text(
            f"{hashlib.md5(data).hexdigest()}:{len(data)}:{TEST_FILE_SIGNATURE}\n")
        # .ndb: name:target type (0 = any file):offset (* = anywhere):hex body
        (self.db_dir / "fhirvault-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")

    def start(self, timeout: float = 60) -> Clamd:
        binary = clamd_binary()
        if binary is None:
            raise RuntimeError("clamd (Debian package clamav-daemon) is not installed")
        if not self.db_dir.exists():  # a restart keeps the database (and any signature a test added)
            self.write_database()
        config = self.work_dir / "clamd.conf"
        config.write_text("\n".join([
            "Foreground yes",
            f"DatabaseDirectory {self.db_dir}",
            f"LocalSocket {self.socket_path}",
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"StreamMaxLength {self.stream_max_bytes}",
            f"LogFile {self.log_path}",
            f"PidFile {self.work_dir / 'clamd.pid'}",
            f"TemporaryDirectory {self.work_dir}",
            f"User {os.environ.get('USER') or 'root'}" if os.geteuid() == 0 else "",
            "MaxThreads 4",
            "",
        ]))
        if self.socket_path.exists():
            self.socket_path.unlink()
        with open(self.work_dir / "clamd.err", "ab") as errors:
            self.proc = subprocess.Popen([binary, "--config-file", str(config)], stdout=subprocess.DEVNULL,
                                         stderr=errors)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clamd exited with {self.proc.returncode}: "
                                   f"{(self.work_dir / 'clamd.err').read_text()[-2000:]}")
            if self.ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"clamd did not answer within {timeout} s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def require_clamd() -> None:
    """Skip without clamd, except under CI=true where a missing clamd fails the run."""
    if clamd_binary() is None:
        if IN_CI:
            pytest.fail("clamd (Debian package clamav-daemon) is missing; scripts/test installs it")
        pytest.skip("clamd (Debian package clamav-daemon) is not installed")
