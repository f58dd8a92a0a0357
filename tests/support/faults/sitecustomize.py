"""Tests only (tests/test_write_faults.py): a `fhirvault serve` started with this directory on PYTHONPATH
fails on purpose halfway through writing any resource that carries the identifier value FAULT_MARK, after
its version row is inserted and before the transaction commits, as an unexpected fault (a bug, a lost
connection) would. Never used by the server itself."""

from __future__ import annotations

import importlib.abc
import json
import sys
from typing import Any

FAULT_MARK = "fault-after-insert"


class _FailHalfway(importlib.abc.MetaPathFinder):
    """Once `fhirvault.app` is imported (every serving process does), `ResourceStore.write` raises
    RuntimeError after its inserts for a resource marked with FAULT_MARK."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "fhirvault.app":
            sys.meta_path.remove(self)
            from fhirvault.store.resources import ResourceStore

            original = ResourceStore.write

            async def write(self: ResourceStore, conn: Any, stored: Any, *args: Any, **kwargs: Any) -> None:
                await original(self, conn, stored, *args, **kwargs)
                if stored.content is not None and FAULT_MARK in json.dumps(stored.content):
                    raise RuntimeError("injected fault after the version row was written")

            ResourceStore.write = write  # type: ignore[method-assign]
        return None


sys.meta_path.insert(0, _FailHalfway())
