"""Fixtures: real fhirvault servers over HTTP, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.support import r4_responses
from tests.support.s3 import s3_settings, seaweedfs  # noqa: F401 - session fixtures for s3 mode
from tests.support.server import FhirApi, ServerProcess, postgres_available, postgres_database, settings_env

pytest_plugins = ["tests.support.binary", "tests.support.standin"]

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_postgres() -> None:
    if postgres_available():
        return
    if IN_CI:
        pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable, and CI=true requires it")
    pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")


@pytest.fixture(scope="session", autouse=True)
def responses_are_valid_r4() -> Iterator[None]:
    """Fails the session when any resource a FhirApi client received is not valid R4 (fhirclient's
    strict models); see tests/support/r4_responses.py."""
    yield
    assert not r4_responses.FAILURES, (f"{len(r4_responses.FAILURES)} of {r4_responses.CHECKED[0]} resources "
                                       "received were not valid R4:\n" + "\n".join(r4_responses.FAILURES[:30]))


# The servers server_factory started for each test module ("tests/test_x.py"), stopped when it ends.
_MODULE_SERVERS: dict[str, list[ServerProcess]] = {}


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Starts a server with given settings (one process unless `workers=N` is among them); `backend` is
    'sqlite' or 'postgres'. A server stops when the test module that started it ends, or with `keep=True`
    (for session-scoped fixtures) when the session does."""
    stack = ExitStack()

    def start(backend: str = "sqlite", keep: bool = False, **settings: Any) -> ServerProcess:
        data_dir = Path(tmp_path_factory.mktemp(f"fv-{backend}"))
        if backend == "postgres" and "database_url" not in settings:
            require_postgres()
            settings["database_url"] = stack.enter_context(postgres_database())
        # One process each unless a test asks for more (`workers=2`), and stopped with their module: at
        # `serve`'s default (a process per core, and their supervisor: about 400 MiB a server) and kept to
        # the session's end, the suite's servers exhausted the machine's memory near the end of a run.
        server = ServerProcess(data_dir, settings_env(**settings), workers=1).start()
        stack.callback(server.stop)
        if not keep:
            module = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[0]
            _MODULE_SERVERS.setdefault(module, []).append(server)
        return server

    yield start
    stack.close()


@pytest.fixture(scope="module", autouse=True)
def _stop_module_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stops the servers server_factory started for this module once its last test has run."""
    yield
    for server in _MODULE_SERVERS.pop(request.node.nodeid, []):
        server.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """The default server, once per database backend, for the whole session."""
    return server_factory(request.param, keep=True)


@pytest.fixture
def api(server: ServerProcess) -> Iterator[FhirApi]:
    """A client with admin credentials on the default server (SQLite, then PostgreSQL)."""
    with server.api() as client:
        yield client
