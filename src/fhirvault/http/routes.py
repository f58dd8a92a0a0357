"""The whole URL map of the server: every path, method and handler, in one table.

No route shadows another, so the order of the table does not matter: a resource type segment is
`[A-Z][A-Za-z]*` and an id (or version id) segment never starts with `_` or `$`, the first characters
of FHIR's reserved words (`_history`, `_search`, `$operation`), which a FHIR id cannot contain
(R4 datatypes.html#id). Handlers for one type (Binary, Media, OperationDefinition) are chosen by the
type segment inside the generic route, visibly, in `TYPE_HANDLERS`. `tests/test_routes.py` proves
that every concrete path reaches exactly one handler.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhirvault.errors import Invalid, NotFound
from fhirvault.fhir.r4 import ID, is_valid_id
from fhirvault.http import (
    binary_api,
    direct_upload_api,
    fhir_api,
    health_api,
    ingestion_api,
    media_api,
    oauth_api,
    operation_definitions_api,
    operations_api,
    storage_api,
    tus_api,
)
from fhirvault.http.auth import FHIR_PREFIX, UPLOAD_PATH

Endpoint = Callable[[Request], Awaitable[Response]]


class ResourceTypeConvertor(Convertor[str]):
    """A path segment naming a resource type (checked against R4 by the handler, for a FHIR 404)."""

    regex = "[A-Z][A-Za-z]*"

    def convert(self, value: str) -> str:
        """The segment as it is (Starlette's convertor API)."""
        return value

    def to_string(self, value: str) -> str:
        """The segment as it is (Starlette's convertor API, for url_path_for)."""
        return value


class IdConvertor(ResourceTypeConvertor):
    """A path segment in an id's place: anything but a reserved word (the handler validates the id)."""

    regex = "[^/_$][^/]*"


register_url_convertor("type", ResourceTypeConvertor())
register_url_convertor("id", IdConvertor())

# Handlers of one resource type's interactions, instead of the generic ones in fhir_api.
TYPE_HANDLERS: dict[str, dict[str, Endpoint]] = {
    "create": {"Binary": binary_api.create},
    "read": {"Binary": binary_api.read, "Media": media_api.read, "OperationDefinition": operation_definitions_api.read,
             "StructureDefinition": operation_definitions_api.read, "SearchParameter": operation_definitions_api.read},
    "vread": {"Binary": binary_api.read},
    "update": {"Binary": binary_api.update},
}

INSTANCE = "/{rtype:type}/{rid:id}"

# (path, {method: handler}); HEAD is answered by the GET handler where none is given.
URL_MAP: list[tuple[str, dict[str, Endpoint | str]]] = [
    ("/healthz", {"GET": health_api.healthz}),
    ("/readyz", {"GET": health_api.readyz}),
    ("/oauth2/token", {"POST": oauth_api.token}),
    ("/.well-known/smart-configuration", {"GET": oauth_api.smart_configuration}),
    ("/storage/{binary_id}/{version_id}", {"GET": storage_api.download, "OPTIONS": storage_api.preflight}),
    (FHIR_PREFIX + "/.well-known/smart-configuration", {"GET": oauth_api.smart_configuration}),
    (FHIR_PREFIX + "/metadata", {"GET": fhir_api.metadata}),
    (FHIR_PREFIX, {"POST": fhir_api.batch, "GET": fhir_api.system_search}),
    (FHIR_PREFIX + "/", {"POST": fhir_api.batch, "GET": fhir_api.system_search}),
    (FHIR_PREFIX + "/_search", {"POST": fhir_api.system_search}),
    (FHIR_PREFIX + "/_history", {"GET": fhir_api.history}),
    (FHIR_PREFIX + "/Patient/{pid:id}/$everything", {"GET": fhir_api.everything}),
    (FHIR_PREFIX + "/Patient/{pid:id}/{rtype:type}", {"GET": fhir_api.compartment_search}),
    (FHIR_PREFIX + "/{rtype:type}", {"GET": fhir_api.search, "POST": "create", "PUT": fhir_api.update,
                                     "PATCH": fhir_api.patch, "DELETE": fhir_api.conditional_delete}),
    (FHIR_PREFIX + "/{rtype:type}/_search", {"POST": fhir_api.search}),
    (FHIR_PREFIX + "/{rtype:type}/_history", {"GET": fhir_api.history}),
    (FHIR_PREFIX + INSTANCE, {"GET": "read", "PUT": "update", "PATCH": fhir_api.patch, "DELETE": fhir_api.delete}),
    (FHIR_PREFIX + INSTANCE + "/_history", {"GET": fhir_api.history}),
    (FHIR_PREFIX + INSTANCE + "/_history/{vid:id}", {"GET": "vread"}),
    (FHIR_PREFIX + INSTANCE + "/_history/{vid:id}/$binary-access-read",
     {"GET": operations_api.binary_access_read, "POST": operations_api.binary_access_read}),
    (FHIR_PREFIX + INSTANCE + "/$binary-access-read",
     {"GET": operations_api.binary_access_read, "POST": operations_api.binary_access_read}),
    (FHIR_PREFIX + INSTANCE + "/$binary-access-write", {"POST": operations_api.binary_access_write}),
    (FHIR_PREFIX + "/{rtype:type}/$validate", {"POST": operations_api.validate}),
    (FHIR_PREFIX + "/Binary/$upload-url", {"POST": direct_upload_api.upload_url}),
    (FHIR_PREFIX + "/Binary/$upload-complete", {"POST": direct_upload_api.upload_complete}),
    (FHIR_PREFIX + INSTANCE + "/$validate", {"GET": operations_api.validate, "POST": operations_api.validate}),
    (FHIR_PREFIX + INSTANCE + "/$ingestion-status", {"GET": ingestion_api.ingestion_status}),
    (FHIR_PREFIX + UPLOAD_PATH, {"POST": tus_api.create, "OPTIONS": tus_api.options}),
    (FHIR_PREFIX + UPLOAD_PATH + "/{upload_id}", {"HEAD": tus_api.head, "PATCH": tus_api.patch,
                                                  "DELETE": tus_api.delete, "OPTIONS": tus_api.options}),
]

GENERIC: dict[str, Endpoint] = {
    "create": fhir_api.create, "read": fhir_api.read, "vread": fhir_api.vread, "update": fhir_api.update,
}


def _interaction(name: str) -> Endpoint:
    """The handler of a FHIR interaction: the type's own from TYPE_HANDLERS, else the generic one."""
    special, generic = TYPE_HANDLERS.get(name, {}), GENERIC[name]

    async def endpoint(request: Request) -> Response:
        return await special.get(request.path_params["rtype"], generic)(request)

    endpoint.__name__ = name
    return endpoint


def _by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" and "HEAD" not in handlers else request.method
        _require_valid_id(request)
        return await handlers[method](request)

    return endpoint


# A byte above 0x7f, raw or %-escaped: only then can a query fail to be UTF-8
_NOT_ASCII = re.compile(rb"[\x80-\xff]|%[89a-fA-F][0-9a-fA-F]")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _require_valid_id(request: Request) -> None:
    """A path segment in an id's place that is no R4 id (R4 datatypes.html#id) names nothing: 404, or 400
    for a PUT, which would create it. Answered here for every interaction and operation on an instance,
    before a database sees it (PostgreSQL refuses a NUL byte in a query parameter outright)."""
    # A NUL in the query or in conditional criteria can match nothing, and PostgreSQL refuses it in a
    # query parameter: refused here for every endpoint.
    # (The raw query string, not `request.url`: building the URL costs more than the rest of this check.)
    query: bytes = request.scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        raise Invalid("The query holds a NUL character (%00)")
    if _NOT_ASCII.search(query) and not _is_utf8(unquote_to_bytes(query.replace(b"+", b" "))):
        # decoded with replacement characters, the value would be searched as something the client never
        # sent (R4 http.html: URLs are UTF-8)
        raise Invalid("The query is not UTF-8: a %-escaped byte sequence names no character")
    criteria = request.headers.get("if-none-exist")
    if criteria and ("%00" in criteria or "\x00" in criteria):
        raise Invalid("The If-None-Exist header holds a NUL character (%00)")
    rid = request.path_params.get("rid")
    if rid is None or is_valid_id(rid):
        return
    if request.method == "PUT":
        raise Invalid(f"'{rid}' is not a valid resource id ({ID})")
    raise NotFound(f"{request.path_params.get('rtype')}/{rid} is not known: '{rid}' is not a resource id")


def routes() -> list[Route]:
    """Starlette routes for URL_MAP: one route per path, so a 405 lists every method the path has."""
    out = []
    for path, by_method in URL_MAP:
        handlers = {m: _interaction(h) if isinstance(h, str) else h for m, h in by_method.items()}
        out.append(Route(path, _by_method(handlers), methods=list(handlers)))
    return out
