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


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    """Starts a server with given settings (one process unless `workers=N` is among them); `backend` is
    'sqlite' or 'postgres'. All stop at session end."""
    stack = ExitStack()

    def start(backend: str = "sqlite", **settings: Any) -> ServerProcess:
        data_dir = Path(tmp_path_factory.mktemp(f"fv-{backend}"))
        if backend == "postgres" and "database_url" not in settings:
            require_postgres()
            settings["database_url"] = stack.enter_context(postgres_database())
        # One process each unless a test asks for more (`workers=2`): these servers live until the session
        # ends, and with `serve`'s default (a process per core, and their supervisor) the suite's
        # servers came to about 400 MiB each, exhausting the machine's memory near the end of a run.
        server = ServerProcess(data_dir, settings_env(**settings), workers=1).start()
        stack.callback(server.stop)
        return server

    yield start
    stack.close()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """The default server, once per database backend."""
    return server_factory(request.param)


@pytest.fixture
def api(server: ServerProcess) -> Iterator[FhirApi]:
    """A client with admin credentials on the default server (SQLite, then PostgreSQL)."""
    with server.api() as client:
        yield client
