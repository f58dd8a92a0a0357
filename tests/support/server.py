"""Starts real fhirvault server processes on free loopback ports for the tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.r4_responses import check_response

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def process_tree(root: int) -> list[int]:
    """`root` and its live descendants (a server with several workers is a supervisor and its children)."""
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return found


def status_bytes(pids: list[int], field: str) -> int:
    """The sum of one /proc/PID/status memory field (VmRSS, VmHWM) over `pids`, in bytes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(f"{field}:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FhirApi(httpx.Client):
    """An HTTP client on one server's FHIR base, carrying that server's admin credentials;
    `base` is the FHIR base URL without a trailing slash. Absolute URLs (paging links) work too."""

    def __init__(self, base: str, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", 60)
        hooks = kwargs.setdefault("event_hooks", {})
        hooks.setdefault("response", []).append(check_response)
        super().__init__(base_url=base, **kwargs)
        self.base = base


class ServerProcess:
    """One `fhirvault serve` subprocess. `workers` sets FHIRVAULT_WORKERS unless `env` does: one process
    by default, because the suite starts dozens of servers on small machines and every worker process
    costs a start-up; None leaves serve's own default (one process per core). tests/test_workers.py
    covers several processes."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None,
                 workers: int | None = 1, python: str | None = None) -> None:
        # `python`: the interpreter whose fhirvault is started (another checkout's, for a benchmark's
        # baseline); this one's by default
        self.python = python or sys.executable
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = env if workers is None or "FHIRVAULT_WORKERS" in env else {**env, "FHIRVAULT_WORKERS": str(workers)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"
        self._admin_token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.url}/fhir/R4"

    def start(self, timeout: float = 120) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
        # The suite keeps dozens of servers alive at once against one PostgreSQL (max_connections 100 by
        # default): each keeps few idle connections, and opens more only while it is busy.
        env.update({"FHIRVAULT_DATABASE_POOL_SIZE": "2", "FHIRVAULT_DATABASE_MAX_OVERFLOW": "10"})
        # The suite covers every search parameter, `_text` and `_content` included (off by default;
        # tests/test_search_text_index_off.py covers the default).
        env["FHIRVAULT_SEARCH_TEXT_INDEX"] = "true"
        env.update(self.env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "fhirvault.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base}/metadata", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate as the server's admin client (token fetched once, then cached)."""
        if self._admin_token is None:
            creds = json.loads((self.data_dir / "admin-client.json").read_text())
            self._admin_token = self.token(creds["client_id"], creds["client_secret"])
        return {"Authorization": f"Bearer {self._admin_token}"}

    def token(self, client_id: str, client_secret: str, scope: str | None = None) -> str:
        """An access token from this server's token endpoint (client_secret_post)."""
        return fetch_token(self.url, client_id, client_secret, scope)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Runs a `fhirvault` command against this server's database and data dir."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRVAULT_")}
        env.update(self.env)
        return subprocess.run([self.python, "-m", "fhirvault.cli", *args, "--data-dir", str(self.data_dir)],
                              env=env, capture_output=True, text=True, timeout=120)

    def create_client(self, name: str, scope: str, patient: str | None = None) -> dict[str, Any]:
        """A new client through the command line: {"client_id", "client_secret", ...}."""
        args = ["clients", "create", "--name", name, "--scope", scope, "--json"]
        if patient:
            args += ["--patient", patient]
        done = self.cli(*args)
        assert done.returncode == 0, done.stderr
        created: dict[str, Any] = json.loads(done.stdout)
        return created

    def api(self, **kwargs: Any) -> FhirApi:
        """A client on this server's FHIR base with admin credentials."""
        headers = {**self.auth_headers(), **kwargs.pop("headers", {})}
        return FhirApi(self.base, headers=headers, **kwargs)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server's processes: the one started here and its workers."""
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def rss_bytes(self) -> int:
        """Resident memory of all the server's processes together."""
        return status_bytes(self.pids(), "VmRSS")


def fetch_token(server_url: str, client_id: str, client_secret: str, scope: str | None = None) -> str:
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    if scope is not None:
        form["scope"] = scope
    r = httpx.post(f"{server_url}/oauth2/token", data=form, timeout=60)
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def admin_headers(server_url: str, data_dir: Path) -> dict[str, str]:
    """Admin credentials of a server started outside ServerProcess, from its data dir."""
    creds = json.loads((data_dir / "admin-client.json").read_text())
    return {"Authorization": f"Bearer {fetch_token(server_url, creds['client_id'], creds['client_secret'])}"}


def postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; yields its SQLAlchemy URL."""
    import psycopg

    name = f"fhirvault_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_env(**settings: Any) -> dict[str, str]:
    out = {}
    for k, v in settings.items():
        out[f"FHIRVAULT_{k.upper()}"] = str(v).lower() if isinstance(v, bool) else str(v)
    return out
