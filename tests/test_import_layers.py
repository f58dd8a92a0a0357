"""The layer rules of DESIGN.md, checked on the source: imports point down only, and no import cycles.

Every import counts, at module level or inside a function (a lazy import still couples the modules;
one hidden in a function once hid a cycle), and under `if TYPE_CHECKING:` too for the layer rule."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fhirvault"

# A module of layer N may import modules of lower layers and of its own package (top-level folder);
# packages on the same layer are independent of each other.
LAYER = {
    "cli": 7, "app": 6, "client": 6, "http": 5, "service": 4,
    "security": 3, "blobs": 3, "jobs": 3,
    "store": 2, "fhir": 1,
    "errors": 0, "config": 0, "clock": 0, "streams": 0, "jsoncodec": 0, "heap": 0, "fhirvault": 0,
}
# Stricter than the layer order: FHIR knowledge is pure; the HTTP edge never touches SQL, files or jobs
# (it goes through the services; `security` is the authentication face it needs before any use case);
# the client library is a separate program that shares only the settings loader and pure FHIR knowledge.
# Both may use the JSON codec: it knows no layer, and FHIR decimals keep their precision through it.
MAY_IMPORT_ONLY = {
    "fhir": {"fhir", "jsoncodec"},
    "http": {"http", "service", "security", "fhir", "errors", "config", "clock", "streams", "jsoncodec", "fhirvault"},
    "client": {"client", "config", "fhir", "jsoncodec"},
    "errors": {"errors"},
    "config": {"config"},
    "clock": {"clock"},
    "streams": {"streams"},
    "jsoncodec": {"jsoncodec"},
    "heap": {"heap"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = importer.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, node.module] if node.module else anchor)
    # `from fhirvault.store import schema` imports the module fhirvault.store.schema.
    return [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    """Module -> the fhirvault modules it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        graph[importer]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(importer, path.name == "__init__.py", node)
            else:
                continue
            graph[importer].update(t for t in targets if t == "fhirvault" or t.startswith("fhirvault."))
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for importer, targets in graph.items():
        src = _package(importer)
        for target in targets:
            dst = _package(target)
            if src == dst:
                continue
            allowed = MAY_IMPORT_ONLY.get(src)
            downward = dst in LAYER and src in LAYER and LAYER[dst] < LAYER[src]
            if not (dst in allowed if allowed is not None else downward):
                found.append(f"{importer} -> {target}")
    return sorted(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer() -> None:
    packages = {_package(m) for m in import_graph()}
    assert packages - set(LAYER) == set()


def test_imports_point_down_only() -> None:
    assert layer_violations(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    """The rules above are not vacuous: a store module importing a service, or two modules importing
    each other, are reported."""
    graph = {"fhirvault.store.x": {"fhirvault.service.y"}, "fhirvault.service.y": {"fhirvault.store.x"},
             "fhirvault.fhir.z": {"fhirvault.errors"}, "fhirvault.http.h": {"fhirvault.store.x"}}
    assert layer_violations(graph) == ["fhirvault.fhir.z -> fhirvault.errors", "fhirvault.http.h -> fhirvault.store.x",
                                       "fhirvault.store.x -> fhirvault.service.y"]
    assert cycles(graph) == [["fhirvault.service.y", "fhirvault.store.x"]]
