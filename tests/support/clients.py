"""Test helpers for the Python client: the async client driven from synchronous tests, and the
admin credentials of a test server for the client's constructor."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fhirvault.client import AsyncFhirClient, FhirClient
from tests.support.server import ServerProcess


class AwaitedClient:
    """An AsyncFhirClient whose methods are called like FhirClient's: each coroutine is run to its
    result on one event loop, each async iterator is returned as an iterator over its collected items."""

    def __init__(self, client: AsyncFhirClient) -> None:
        self.client = client
        self.runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isasyncgen(result):
                return iter(self.runner.run(_collect(result)))
            if inspect.iscoroutine(result):
                return self.runner.run(result)
            return result

        return call

    def close(self) -> None:
        self.runner.run(self.client.aclose())
        self.runner.close()


async def _collect(agen: Any) -> list[Any]:
    return [item async for item in agen]


@contextmanager
def open_client(flavour: str, base: str, **kwargs: Any) -> Iterator[Any]:
    """A FhirClient ('sync') or an AwaitedClient around an AsyncFhirClient ('async')."""
    if flavour == "sync":
        with FhirClient(base, **kwargs) as client:
            yield client
    else:
        awaited = AwaitedClient(AsyncFhirClient(base, **kwargs))
        try:
            yield awaited
        finally:
            awaited.close()


def admin_kwargs(server: ServerProcess) -> dict[str, str]:
    """Client-credential arguments for the server's admin client (none while the server has no auth)."""
    path = server.data_dir / "admin-client.json"
    if not path.exists():
        return {}
    creds = json.loads(path.read_text())
    return {"client_id": creds["client_id"], "client_secret": creds["client_secret"]}
