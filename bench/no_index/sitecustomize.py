"""Benchmark only (bench/search.py): a `fhirvault serve` started with this directory on PYTHONPATH writes no
search index rows (nor the access rows derived from them), so that the cost of indexing a REST create can
be measured beside a server that indexes, on the same database. Never used by the server itself."""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any


class _WithoutIndex(importlib.abc.MetaPathFinder):
    """Once `fhirvault.app` is imported (every serving process does), the index extraction the create path
    calls is replaced by one that yields no rows."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "fhirvault.app":
            sys.meta_path.remove(self)
            import fhirvault.service.resources as resources

            resources.search_index = lambda *args: None  # type: ignore[assignment,return-value]
        return None


sys.meta_path.insert(0, _WithoutIndex())
