"""The URL map (fhirvault.http.routes): every concrete path and method reaches exactly one route."""

from __future__ import annotations

import itertools
import re

from starlette.routing import Match, Route

from fhirvault.http.routes import TYPE_HANDLERS, URL_MAP, routes

PARAM = re.compile(r"{([a-z_]+)(?::[a-z]+)?}")


def _literal_segments() -> set[str]:
    return {seg for path, _ in URL_MAP for seg in path.split("/") if seg and "{" not in seg}


def _concrete_paths(template: str) -> list[str]:
    """The template with its parameters filled by sample values and by every literal segment of the
    map, so that a parameter that would swallow `_history`, `$binary-access-read` or `metadata` shows."""
    names = PARAM.findall(template)
    values = sorted({"Patient", "a-b.c", *_literal_segments()})
    out = []
    for combo in itertools.product(values, repeat=len(names)):
        path = template
        for value in combo:
            path = PARAM.sub(value, path, count=1)
        out.append(path)
    return out


def _full_matches(table: list[Route], path: str, method: str) -> list[str]:
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    return [r.path for r in table if r.matches(scope)[0] == Match.FULL]


def test_no_route_shadows_another() -> None:
    table = routes()
    for template, handlers in URL_MAP:  # two routes clash only on a method both have
        for path in _concrete_paths(template):
            for method in handlers:
                assert len(_full_matches(table, path, method)) <= 1, (path, method)


def test_reserved_words_are_never_taken_for_ids_or_types() -> None:
    table = routes()
    assert _full_matches(table, "/fhir/R4/Binary/_history", "GET") == ["/fhir/R4/{rtype:type}/_history"]
    assert _full_matches(table, "/fhir/R4/Binary/_search", "POST") == ["/fhir/R4/{rtype:type}/_search"]
    assert _full_matches(table, "/fhir/R4/metadata", "GET") == ["/fhir/R4/metadata"]
    assert _full_matches(table, "/fhir/R4/Binary/1/$binary-access-read", "GET") == [
        "/fhir/R4/{rtype:type}/{rid:id}/$binary-access-read"]


def test_type_handlers_name_generic_interactions_of_the_map() -> None:
    interactions = {h for _, handlers in URL_MAP for h in handlers.values() if isinstance(h, str)}
    assert set(TYPE_HANDLERS) <= interactions
