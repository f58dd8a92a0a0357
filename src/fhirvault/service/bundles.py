"""Batch and transaction Bundles: each entry through the ordinary use cases; a transaction is all or nothing."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.errors import FhirVaultError, Invalid, NotAcceptable, NotFound
from fhirvault.fhir.bundle import bundle as make_bundle
from fhirvault.fhir.bundle_links import NARRATIVE_LINK, replace_links
from fhirvault.fhir.media_types import is_produced_format
from fhirvault.fhir.outcome import informational, operation_outcome
from fhirvault.fhir.patch import FHIRPATH_PATCH, JSON_PATCH, MERGE_PATCH, PatchDocument
from fhirvault.fhir.r4 import is_resource_type, is_valid_id
from fhirvault.fhir.subsetting import subset
from fhirvault.service.binaries import BinaryService
from fhirvault.service.context import RequestContext
from fhirvault.service.history import history_bundle
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.preconditions import Precondition, not_modified
from fhirvault.service.resources import ResourceService, WriteResult, check_resource_body, new_id
from fhirvault.service.search import DEFAULT_COUNT, MAX_COUNT
from fhirvault.service.search_parse import element_names, query_pairs, summary_mode, whole_param
from fhirvault.service.searchset import searchset_bundle
from fhirvault.service.timeutil import parse_http_date, to_instant
from fhirvault.service.validation import relocated
from fhirvault.store.resources import StoredResource

log = logging.getLogger("fhirvault")

# FHIR's processing order within a transaction.
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
INTERACTION = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
# The media types a Binary may carry a patch in (R4 http.html#transaction: PATCH entries).
BINARY_PATCH_TYPES = {"application/json-patch+json": JSON_PATCH, "application/merge-patch+json": MERGE_PATCH}
CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")
# R4 datatypes.html#uuid (hex digits taken in either case, as clients write them).
URN_UUID = re.compile(r"^urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class EntryRequest:
    """One Bundle entry's request, parsed: its position, method, target type, id and version, query string
    (criteria or search parameters), resource body and fullUrl."""

    index: int
    method: str
    rtype: str
    rid: str | None
    vid: str | None
    query: str
    resource: Any
    full_url: str | None
    if_match: Precondition | None  # request.ifMatch / ifNoneMatch of a write
    if_none_exist: str | None
    if_none_match: str | None = None  # of a read: 304 when it matches
    if_modified_since: str | None = None  # of a read
    patch: PatchDocument | None = None  # of a PATCH entry, decoded (references in it are replaced too)
    history: bool = False  # GET Type/_history or Type/id/_history: the query holds history's parameters
    # Filled in before any entry is processed: conditionals resolved to the ids they act on.
    existing: StoredResource | None = None  # conditional create that found its match
    # A conditional create with the same type and criteria as an earlier entry of the transaction that
    # creates: it resolves to what that entry creates (no duplicate), as a conditional create that matched.
    same_as: EntryRequest | None = None
    create: bool = False  # a conditional update that creates
    delete_ids: list[str] = field(default_factory=list)

    # PUT, PATCH or DELETE addressed by search criteria instead of an id; fixed when the entry is read, as
    # resolving the criteria fills in `rid`.
    conditional: bool = field(init=False)

    def __post_init__(self) -> None:
        self.conditional = self.rid is None and bool(self.query) and self.method in ("PUT", "PATCH", "DELETE")


def _parse_entry(index: int, entry: Any, base_url: str) -> EntryRequest:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        raise Invalid(f"{where} must be an object", expression=where)
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("method"), str) or not isinstance(
        request.get("url"), str
    ):
        raise Invalid(f"{where}.request needs a method and a url", expression=f"{where}.request")
    method = request["method"]
    if method not in METHOD_ORDER:
        # HTTPVerb's codes are upper case (R4 valueset-http-verb): `post` is no code, and was taken as POST
        raise Invalid(f"{where}.request.method {method!r} is not one of {', '.join(METHOD_ORDER)} (R4 HTTPVerb)",
                      expression=f"{where}.request.method")
    url = request["url"]
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    split = urlsplit(url)
    # each segment %-decoded, as the same path outside a Bundle is (`_history/%31` is version 1)
    parts = [unquote(part) for part in split.path.strip("/").split("/")]
    if "" in parts[1:]:  # `Patient//_history` names no resource (it was read as the type's history)
        raise Invalid(f"{where}.request.url '{request['url']}' has an empty path segment",
                      expression=f"{where}.request.url")
    if not parts[0] or not is_resource_type(parts[0]):
        raise Invalid(f"{where}.request.url '{request['url']}' does not name a resource type",
                      expression=f"{where}.request.url")
    reads = method in ("GET", "HEAD")
    history = _history_shape(parts)
    if history and not reads:
        raise Invalid(f"{where}.request.url '{request['url']}' is a history, which only GET reads",
                      expression=f"{where}.request.url")
    if not history and not (len(parts) <= 2 or len(parts) == 4 and parts[2] == "_history" and reads):
        # `Patient/1/_history` was answered as a read of Patient/1, `Patient/1/x` likewise
        raise Invalid(f"{where}.request.url '{request['url']}' is no interaction a Bundle entry carries (Type, "
                      "Type/id, Type/id/_history/vid, Type/_history, Type/id/_history, each with a query)",
                      expression=f"{where}.request.url")
    rid = None if parts[1:2] == ["_history"] else parts[1] if len(parts) > 1 else None
    if rid is not None and method != "POST" and not is_valid_id(rid):  # as for the same URL outside a Bundle
        error = Invalid if method == "PUT" else NotFound
        raise error(f"{where}.request.url: '{rid}' is not a resource id", expression=f"{where}.request.url")
    if "%00" in split.query or "%00" in str(request.get("ifNoneExist")):
        raise Invalid(f"{where}.request holds a NUL character (%00) in its criteria", expression=f"{where}.request")
    vid = parts[3] if len(parts) == 4 else None
    conditions = {name: request.get(name) for name in ("ifMatch", "ifNoneMatch", "ifNoneExist", "ifModifiedSince")}
    for name, value in conditions.items():
        if value is not None and not isinstance(value, str):
            raise Invalid(f"{where}.request.{name} must be a string", expression=f"{where}.request.{name}")
    if conditions["ifNoneExist"] is not None and method != "POST":
        raise Invalid(f"{where}.request.ifNoneExist is for a create (POST), not {method}",
                      expression=f"{where}.request.ifNoneExist")
    if conditions["ifModifiedSince"] is not None and not reads:
        raise Invalid(f"{where}.request.ifModifiedSince is for a read (GET), not {method}",
                      expression=f"{where}.request.ifModifiedSince")
    since = conditions["ifModifiedSince"]
    if since is not None and not _INSTANT.match(since) and parse_http_date(since) is None:
        # an R4 instant (Bundle.entry.request.ifModifiedSince; an HTTP date is taken too, as in the header):
        # anything else was ignored, and the read answered as if it were absent
        raise Invalid(f"{where}.request.ifModifiedSince {since!r} is not an instant "
                      "(e.g. 2025-03-04T10:00:00Z)", expression=f"{where}.request.ifModifiedSince")
    if reads and conditions["ifMatch"] is not None:
        raise Invalid(f"{where}.request.ifMatch is for a write, not {method}", expression=f"{where}.request.ifMatch")
    try:
        precondition = None if reads else Precondition.parse(conditions["ifMatch"], conditions["ifNoneMatch"])
    except Invalid as exc:
        raise Invalid(f"{where}.request: {exc.message}", expression=f"{where}.request") from None
    if method == "POST" and precondition is not None and precondition.asks_existing:
        raise Invalid(f"{where}.request: ifMatch and ifNoneMatch with an ETag apply to an existing resource; a "
                      "create (POST) has none (use ifNoneExist)", expression=f"{where}.request")
    for name in ("ifNoneMatch", "ifModifiedSince"):
        if reads and (rid is None or history) and conditions[name] is not None:
            raise Invalid(f"{where}.request.{name} applies to a read of one resource, not to a search",
                          expression=f"{where}.request.{name}")
    query = _refuse_format_parameters(where, split.query)
    if_none_exist = conditions["ifNoneExist"]
    if if_none_exist is not None:
        query_pairs(if_none_exist, f"{where}.request.ifNoneExist")  # a 400 when it is not UTF-8
    if method == "POST" and query:
        # `POST Patient?criteria` is a conditional create (as fhirpy sends it outside Bundles), never a
        # create that drops its criteria.
        if if_none_exist is not None:
            raise Invalid(f"{where}.request: give the conditions of a conditional create once, in ifNoneExist "
                          "or in the url", expression=f"{where}.request")
        if_none_exist = query
    if query and rid is not None and method in ("PUT", "PATCH", "DELETE"):
        # `PUT Patient/x?foo=bar` was applied with its query dropped: a write names its resource by id or by
        # criteria, not both (R4 http.html: conditional writes take criteria on the type)
        raise Invalid(f"{where}.request.url '{request['url']}': a {method} names its resource by id or by "
                      "criteria on the type (Type?criteria), not both", expression=f"{where}.request.url")
    parsed = EntryRequest(index, method, parts[0], rid, vid, query, entry.get("resource"),
                          entry.get("fullUrl"), precondition, if_none_exist,
                          conditions["ifNoneMatch"] if reads else None, conditions["ifModifiedSince"])
    parsed.history = history
    if method == "PATCH":
        parsed.patch = patch_document(parsed)
    return parsed


# R4 datatypes.html#instant
_INSTANT = re.compile(r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
                      r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]"
                      r"|14:00))$")


def _history_shape(parts: list[str]) -> bool:
    """Whether the path parts of an entry's url name a history: `Type/_history` or `Type/id/_history`."""
    return len(parts) == 2 and parts[1] == "_history" or len(parts) == 3 and parts[2] == "_history"


def _refuse_format_parameters(where: str, query: str) -> str:
    """The query of an entry's url without `_format` and `_pretty`, which a Bundle's entries cannot have:
    they are answered inside the one response, in its format, so a format of their own is refused (406 /
    400) rather than ignored, unless it asks for what the response is anyway (FHIR JSON, not pretty)."""
    pairs = query_pairs(query, f"{where}.request.url's query")  # and a 400 when it is not UTF-8
    if not any(name in ("_format", "_pretty") for name, _ in pairs):
        return query
    for name, value in pairs:
        if name == "_format" and not is_produced_format(value):
            raise NotAcceptable(f"{where}.request.url asks for _format={value!r}; entries are answered in the "
                                "Bundle's own format, FHIR JSON", expression=f"{where}.request.url")
        if name == "_pretty" and value not in ("false", ""):
            raise Invalid(f"{where}.request.url asks for _pretty={value!r}; entries are answered in the "
                          "Bundle's own layout (give _pretty on the Bundle's request)",
                          expression=f"{where}.request.url")
    return urlencode([(name, value) for name, value in pairs if name not in ("_format", "_pretty")])


def _processing_order(e: EntryRequest) -> tuple[int, bool, int]:
    """FHIR's order of methods; within one method Binaries last, so that a Binary whose securityContext
    names a resource of the same Bundle finds it written (the access check reads it), then Bundle order."""
    return METHOD_ORDER[e.method], e.rtype == "Binary", e.index


def patch_document(e: EntryRequest) -> PatchDocument:
    """The patch a PATCH entry carries: a Binary holding a JSON Patch (or merge patch), or a Parameters
    resource holding a FHIRPath Patch (R4 http.html#transaction)."""
    where = f"Bundle.entry[{e.index}].resource"
    resource = e.resource
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        return PatchDocument(FHIRPATH_PATCH, resource)
    if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
        raise Invalid(f"{where} of a PATCH entry must be a Binary holding a JSON Patch or a Parameters "
                      "resource holding a FHIRPath Patch", expression=where)
    kind = BINARY_PATCH_TYPES.get(str(resource.get("contentType", "")).split(";")[0].strip().lower())
    if kind is None:
        raise Invalid(f"{where}.contentType must be one of {', '.join(BINARY_PATCH_TYPES)}",
                      expression=f"{where}.contentType")
    try:
        raw = base64.b64decode(str(resource.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{where}.data must be base64 of a JSON patch document", expression=f"{where}.data") from None
    try:
        body = jsoncodec.loads_strict(raw)  # as strictly as a PATCH request's own body
    except jsoncodec.StrictJsonError as exc:
        raise Invalid(f"{where}.data: {str(exc).replace('The request body', 'the patch')}",
                      expression=f"{where}.data") from None
    return PatchDocument(kind, body)


def _is_conditional_reference(value: Any) -> bool:
    m = CONDITIONAL_REFERENCE.match(value) if isinstance(value, str) else None
    return m is not None and is_resource_type(m.group(1))


def conditional_references(node: Any, out: set[str]) -> set[str]:
    """Every `reference` value in `node` of the form `Type?criteria` (R4 http.html#trules)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if _is_conditional_reference(value):
                    out.add(value)
            else:
                conditional_references(value, out)
    elif isinstance(node, list):
        for value in node:
            conditional_references(value, out)
    return out


def patch_references(document: PatchDocument) -> set[str]:
    """The conditional references a patch would write: `reference` members of any value it adds, and a
    value written to a `reference` element itself (JSON Patch `path` ending in `/reference`; FHIRPath Patch
    `path` ending in `.reference` or `name` `reference`)."""
    out = conditional_references(document.body, set())
    if document.kind == JSON_PATCH and isinstance(document.body, list):
        for op in document.body:
            if isinstance(op, dict) and str(op.get("path", "")).endswith("/reference") \
                    and _is_conditional_reference(op.get("value")):
                out.add(op["value"])
    elif document.kind == FHIRPATH_PATCH and isinstance(document.body, dict):
        for op in document.body.get("parameter") or []:
            parts = {p.get("name"): p for p in (op.get("part") or []) if isinstance(p, dict)} \
                if isinstance(op, dict) else {}
            at_reference = str(parts.get("path", {}).get("valueString", "")).endswith(".reference") \
                or parts.get("name", {}).get("valueString") == "reference"
            value = next((v for k, v in parts.get("value", {}).items() if k.startswith("value")), None)
            if at_reference and _is_conditional_reference(value):
                out.add(str(value))
    return out


# `href` and `src` attributes of the narrative (R4 http.html#trules: links in `<a href>` and `<img src>`
# are replaced like references).


def _replace_refs(node: Any, mapping: dict[str, str], key: str | None = None) -> Any:
    """A patch document (`node`) with every string equal to a key of `mapping` (a fullUrl, a conditional
    reference) replaced by its value, and a narrative's `href`/`src` attributes likewise: a patch's values
    have no element types to go by (resources are rewritten by type: fhir/bundle_links.py)."""
    if isinstance(node, dict):
        return {k: _replace_refs(v, mapping, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, mapping, key) for v in node]
    if isinstance(node, str):
        if node in mapping:
            return mapping[node]
        if key == "div" and ("href" in node or "src" in node):
            return NARRATIVE_LINK.sub(lambda m: f"{m.group(1)}={m.group(2)}"
                                      f"{mapping.get(m.group(3), m.group(3))}{m.group(2)}", node)
    return node


def _replace_entry_refs(e: EntryRequest, mapping: dict[str, str]) -> None:
    """Resolves the references of an entry's resource and of its patch document (R4 http.html#trules).
    Raises Invalid for a reference left as a `urn:uuid:` placeholder that names no entry."""
    if e.resource is not None:
        unresolved: list[str] = []
        e.resource = replace_links(e.resource, mapping, unresolved)
        if unresolved:
            # Stored as it is, the placeholder would name nothing once the Bundle is gone (HAPI FHIR refuses
            # it alike); in a batch, entries may not refer to each other at all (R4 http.html#brules).
            raise Invalid(f"Bundle.entry[{e.index}].resource refers to '{unresolved[0]}', which is the fullUrl of "
                          "no entry of this Bundle (a batch's entries cannot refer to each other)",
                          expression=f"Bundle.entry[{e.index}].resource")
    if e.patch is not None:
        e.patch = PatchDocument(e.patch.kind, _replace_refs(e.patch.body, mapping))


def refuse_duplicate_full_urls(raw_entries: list[Any]) -> None:
    """Invalid (400) naming the fullUrl when two entries have the same one and the same
    `resource.meta.versionId` (R4 bundle.html invariant bdl-7; only history Bundles, which are never
    POSTed here, may repeat one), and for a `urn:uuid:` fullUrl that is not a UUID (R4 datatypes.html#uuid):
    references to it would otherwise go to whichever entry happened to come last."""
    seen: dict[tuple[str, Any], int] = {}
    for i, entry in enumerate(raw_entries):
        url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if not isinstance(url, str):
            continue
        where = f"Bundle.entry[{i}].fullUrl"
        if url.lower().startswith("urn:uuid:") and not URN_UUID.match(url):
            raise Invalid(f"{where} '{url}' is not a urn:uuid: followed by a UUID", expression=where)
        resource = entry.get("resource")
        meta = resource.get("meta") if isinstance(resource, dict) else None
        version = meta.get("versionId") if isinstance(meta, dict) else None
        key = (url, version if isinstance(version, str) else None)
        if key in seen:
            raise Invalid(f"Bundle.entry[{seen[key]}] and Bundle.entry[{i}] have the same fullUrl '{url}'; a "
                          "fullUrl must be unique in a Bundle (bdl-7)", expression=where)
        seen[key] = i


def _criteria_key(rtype: str, criteria: str) -> str:
    """Conditional criteria in a normal form (parameters sorted, `Type?` or `?` prefix dropped), so that
    two entries asking the same in different order are seen as the same condition."""
    return f"{rtype}?" + urlencode(sorted(parse_qsl(criteria.removeprefix(f"{rtype}?").lstrip("?"),
                                                    keep_blank_values=True)))


def _in_entry(exc: FhirVaultError, e: EntryRequest) -> FhirVaultError:
    """`exc` raised by a read entry of a transaction, its message and expression naming the entry."""
    where = f"Bundle.entry[{e.index}]"
    path = f"{e.rtype}{'/' + e.rid if e.rid else ''}{'/_history' if e.history else ''}"\
           f"{'/_history/' + e.vid if e.vid else ''}"
    exc.message = f"{where} ({e.method} {path}{'?' + e.query if e.query else ''}): {exc.message}"
    exc.args = (exc.message,)
    exc.expression = exc.expression or f"{where}.request.url"
    return exc


def _status_line(code: int) -> str:
    """An entry's response.status: the code and its reason phrase (`404 Not Found`), as a status line has
    them (R4 bundle.html: "the status code ... may contain the text"); failed entries gave the code alone."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def refuse_overlaps(entries: list[EntryRequest]) -> None:
    """Invalid (400) when two entries of a transaction write the same resource, once conditionals are
    resolved: "If any resource identities (including resolved identities from conditional update/delete)
    overlap in steps 1-3, then the transaction SHALL fail" (R4 http.html#trules). A conditional create
    that found its match writes nothing, nor does one resolved to an earlier entry's create (`same_as`)."""
    seen: dict[str, int] = {}
    for e in entries:
        if e.method not in INTERACTION or e.existing is not None or e.same_as is not None:
            continue
        for rid in e.delete_ids if e.conditional and e.method == "DELETE" else [e.rid] if e.rid else []:
            key = f"{e.rtype}/{rid}"
            if key in seen:
                raise Invalid(f"Bundle.entry[{e.index}] and Bundle.entry[{seen[key]}] both act on {key}; a "
                              "transaction acts on each resource once", expression=f"Bundle.entry[{e.index}]")
            seen[key] = e.index


class BundleService:
    """Processes batch and transaction Bundles (R4 3.1.0.11-12): entries in the spec's order (DELETE, POST,
    PUT/PATCH, GET), urn:uuid and conditional references resolved, a transaction in one database
    transaction that either applies every entry or none."""

    def __init__(self, resources: ResourceService, binaries: BinaryService) -> None:
        """`binaries` writes the Binary entries, by the rules of a Binary written alone (BinaryService.json_in)."""
        self.resources = resources
        self.binaries = binaries

    async def process(self, ctx: RequestContext, bundle: Any) -> dict[str, Any]:
        """Runs a POSTed Bundle and returns the batch-response or transaction-response Bundle. Raises Invalid
        for anything but a batch or transaction Bundle and, in a transaction, for the first entry
        that fails (nothing applied); a batch answers failed entries with their own
        OperationOutcome."""
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise Invalid("POST to the FHIR base takes a Bundle of type batch or transaction")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise Invalid(f"Bundle.type must be batch or transaction, not {kind!r}", expression="Bundle.type")
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise Invalid("Bundle.entry must be a list", expression="Bundle.entry")
        refuse_duplicate_full_urls(raw_entries)
        if kind == "transaction":
            entries = [_parse_entry(i, e, ctx.base_url) for i, e in enumerate(raw_entries)]
            responses = await self._transaction(ctx, entries)
        else:
            responses = await self._batch(ctx, raw_entries)
        return make_bundle(f"{kind}-response", responses, bundle_id=new_id())

    async def _batch(self, ctx: RequestContext, raw_entries: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(raw_entries):
            try:
                entry = _parse_entry(i, raw, ctx.base_url)
                if entry.method in ("GET", "HEAD"):
                    out.append(await self._read_entry(ctx, entry))
                else:
                    result = await self._write_alone(ctx, entry)
                    out.append(await self._write_response(ctx, result))
            except FhirVaultError as exc:
                outcome = ({"resourceType": "OperationOutcome", "issue": exc.issues} if exc.issues
                           else operation_outcome(exc.message, code=exc.code))
                out.append({"response": {"status": _status_line(exc.status), "outcome": outcome}})
            except Exception:  # noqa: BLE001 - each batch entry is answered on its own (R4 http.html#brules)
                # Entries before it stay written (each ran in its own transaction): the client must learn
                # which did, so a fault in one entry is that entry's 500, not the whole batch's.
                log.exception("unexpected error in batch entry %d", i)
                out.append({"response": {"status": _status_line(500), "outcome": operation_outcome(
                    f"The server failed to process entry {i}; the error was logged", code="exception")}})
        return out

    async def _write_alone(self, ctx: RequestContext, entry: EntryRequest) -> WriteResult | None:
        self.resources.require(ctx, INTERACTION[entry.method], entry.rtype)

        async def work(uow: UnitOfWork) -> WriteResult | None:
            mapping = await self._prepare(uow, ctx, [entry])
            _replace_entry_refs(entry, mapping)
            return await self._write_entry(uow, ctx, entry)

        return await self.resources.in_transaction(ctx, work)

    async def _prepare(self, uow: UnitOfWork, ctx: RequestContext, entries: list[EntryRequest]) -> dict[str, str]:
        """Resolves what every entry acts on before any is processed, and returns the reference mapping:
        fullUrl -> `Type/id` of the resource the entry writes, `Type?criteria` -> the one match."""
        svc = self.resources
        mapping: dict[str, str] = {}
        # Every conditional create's lock first, in one order (see ResourceService.serialize_creates_in).
        creating = [(e.rtype, e.if_none_exist) for e in entries if e.method == "POST" and e.if_none_exist]
        creating += [(e.rtype, e.query) for e in entries if e.conditional and e.method == "PUT"]
        await svc.serialize_creates_in(uow, creating)
        creators: dict[str, EntryRequest] = {}  # criteria -> the entry that creates when they match nothing
        for e in entries:
            if e.method == "POST":
                if e.rid:
                    raise Invalid(f"Bundle.entry[{e.index}]: POST goes to a type, not to {e.rtype}/{e.rid}")
                if e.if_none_exist is not None:
                    key = _criteria_key(e.rtype, e.if_none_exist)
                    e.same_as = creators.get(key)
                    if e.same_as is None:
                        e.existing = await svc.conditional_create_target_in(uow, ctx, e.rtype, e.if_none_exist,
                                                                            "If-None-Exist")
                        if e.existing is None:
                            creators[key] = e
                e.rid = e.same_as.rid if e.same_as else e.existing.id if e.existing else new_id()
            elif e.conditional and e.method == "PUT":
                resource = check_resource_body(e.resource, e.rtype)
                e.rid, e.create = await svc.conditional_update_target_in(uow, ctx, e.rtype, e.query, resource)
            elif e.conditional and e.method == "PATCH":
                e.rid = await svc.conditional_patch_id_in(uow, ctx, e.rtype, e.query)
            elif e.conditional:
                e.delete_ids = await svc.conditional_delete_ids_in(uow, ctx, e.rtype, e.query)
            if e.full_url and e.rid and e.method in ("POST", "PUT", "PATCH"):
                mapping[e.full_url] = f"{e.rtype}/{e.rid}"
        for e in entries:
            found = conditional_references(e.resource, set()) | (patch_references(e.patch) if e.patch else set())
            for ref in sorted(found - set(mapping)):
                rtype, _, criteria = ref.partition("?")
                match = await svc.conditional_target_in(uow, ctx, rtype, criteria, "The conditional reference")
                if match is None:
                    raise Invalid(f"Bundle.entry[{e.index}]: the conditional reference '{ref}' matches no {rtype}")
                mapping[ref] = f"{rtype}/{match.id}"
        return mapping

    async def _transaction(self, ctx: RequestContext, entries: list[EntryRequest]) -> list[dict[str, Any]]:
        for e in entries:
            if e.method in INTERACTION:
                self.resources.require(ctx, INTERACTION[e.method], e.rtype)

        async def work(uow: UnitOfWork) -> tuple[dict[int, WriteResult | None], dict[int, dict[str, Any]]]:
            mapping = await self._prepare(uow, ctx, entries)
            refuse_overlaps(entries)
            # What later entries will write: checks that need it (an Attachment naming a Binary of this
            # Bundle) wait for it, so the order of entries does not matter (R4 http.html#trules).
            uow.upcoming = {f"{e.rtype}/{e.rid}" for e in entries if e.method in ("POST", "PUT") and e.rid}
            results: dict[int, WriteResult | None] = {}
            reads: dict[int, dict[str, Any]] = {}
            ordered = sorted(entries, key=_processing_order)
            for e in ordered:
                _replace_entry_refs(e, mapping)
                if e.method in ("GET", "HEAD"):
                    continue
                if e.same_as is not None:
                    first = results[e.same_as.index]  # same type and method: written before this one
                    assert first is not None
                    results[e.index] = WriteResult(first.stored, created=False, existing=True)
                    continue
                results[e.index] = await self._write_entry(uow, ctx, e)
                uow.upcoming.discard(f"{e.rtype}/{e.rid}")
            await self.resources.finish_deferred(ctx, uow)
            await self._refuse_created_duplicates(uow, ctx, entries)
            # Reads last, in this transaction: they see its writes, and one that fails (404, 400, 410, 403)
            # fails the whole transaction like a failing write (R4 http.html#transaction: all or nothing).
            for e in ordered:
                if e.method in ("GET", "HEAD"):
                    try:
                        reads[e.index] = await self._read_entry_on(ctx, e, uow.conn)
                    except FhirVaultError as exc:
                        raise _in_entry(exc, e) from None
            return results, reads

        written, reads = await self.resources.in_transaction(ctx, work)
        return [reads[e.index] if e.method in ("GET", "HEAD") else await self._write_response(ctx, written[e.index])
                for e in entries]

    async def _refuse_created_duplicates(self, uow: UnitOfWork, ctx: RequestContext,
                                         entries: list[EntryRequest]) -> None:
        """Invalid (400) naming both entries when an entry that created because its criteria matched nothing
        (a conditional create, a conditional update that creates) now matches a resource another entry of
        the transaction wrote: the two would be the duplicates the condition is there to prevent, and which
        of them "exists first" is not defined (R4 http.html#trules: order does not matter). Entries with
        the same criteria do not get here: the later resolves to the earlier (`same_as`)."""
        writers = {f"{e.rtype}/{e.rid}": e.index for e in entries
                   if e.method in ("POST", "PUT", "PATCH") and e.rid and e.existing is None and e.same_as is None}
        for e in entries:
            if e.method == "POST" and e.if_none_exist is not None and e.existing is None and e.same_as is None:
                criteria = e.if_none_exist
            elif e.method == "PUT" and e.conditional and e.create:
                criteria = e.query
            else:
                continue
            criteria = criteria.removeprefix(f"{e.rtype}?").lstrip("?")
            for match in await self.resources.matches_in(uow, ctx, e.rtype, criteria, 3):
                other = writers.get(f"{match.resource_type}/{match.id}")
                if other is not None and other != e.index:
                    raise Invalid(f"Bundle.entry[{e.index}] creates {e.rtype} because '{criteria}' matched nothing, "
                                  f"but Bundle.entry[{other}] writes {match.resource_type}/{match.id}, which "
                                  "matches it: the transaction would create the duplicate the condition prevents",
                                  expression=f"Bundle.entry[{e.index}].request")

    async def _write_entry(self, uow: UnitOfWork, ctx: RequestContext, e: EntryRequest) -> WriteResult | None:
        try:
            return await self._write_entry_as_sent(uow, ctx, e)
        except Invalid as exc:
            raise relocated(exc, e.rtype, f"Bundle.entry[{e.index}].resource") from None

    async def _write_entry_as_sent(self, uow: UnitOfWork, ctx: RequestContext,
                                   e: EntryRequest) -> WriteResult | None:
        svc = self.resources
        binary = e.rtype == "Binary" and isinstance(e.resource, dict) and e.method in ("POST", "PUT")
        if e.method == "POST":
            if e.existing is not None:
                return WriteResult(e.existing, created=False, existing=True)
            if binary:
                return await self.binaries.json_in(uow, ctx, e.resource, rid=e.rid, update=False)
            return await svc.create_in(uow, ctx, e.rtype, e.resource, rid=e.rid)
        if e.method == "DELETE" and e.conditional:
            if not e.delete_ids and e.if_match is not None:
                e.if_match.check(e.rtype, f"?{e.query}", None)
            for rid in e.delete_ids:
                await svc.delete_in(uow, ctx, e.rtype, rid, e.if_match)
            return None
        if not e.rid:
            raise Invalid(f"Bundle.entry[{e.index}]: {e.method} needs a url like {e.rtype}/[id] "
                          f"or {e.rtype}?[criteria]")
        if e.method == "PUT":
            if e.create:
                if binary:
                    return await self.binaries.json_in(uow, ctx, e.resource, rid=e.rid, update=False,
                                                       precondition=e.if_match)
                return await svc.create_in(uow, ctx, e.rtype, e.resource, rid=e.rid, precondition=e.if_match)
            resource = check_resource_body(e.resource, e.rtype)
            body = {**resource, "id": e.rid} if e.conditional else resource
            if binary:
                return await self.binaries.json_in(uow, ctx, body, rid=e.rid, update=True, precondition=e.if_match)
            return await svc.update_in(uow, ctx, e.rtype, e.rid, body, e.if_match)
        if e.method == "PATCH":
            assert e.patch is not None
            return await svc.patch_in(uow, ctx, e.rtype, e.rid, e.patch, e.if_match)
        await svc.delete_in(uow, ctx, e.rtype, e.rid, e.if_match)
        return None

    async def _write_response(self, ctx: RequestContext, result: WriteResult | None) -> dict[str, Any]:
        if result is None:
            return {"response": {"status": "204 No Content"}}
        s = result.stored
        status = 201 if result.created and not result.existing else 200
        response: dict[str, Any] = {
            "status": _status_line(status),
            "location": f"{s.resource_type}/{s.id}/_history/{s.version_id}",
            "etag": f'W/"{s.version_id}"',
            "lastModified": to_instant(s.last_updated),
        }
        entry: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{s.resource_type}/{s.id}"}
        # The request's `Prefer: return=` applies to each write entry (R4 http.html#prefer): no resource, or an
        # OperationOutcome in its place; it was ignored, every entry carried its resource
        if ctx.prefer_return == "operationoutcome":
            verb = "found" if result.existing else "created" if result.created else "updated"
            response["outcome"] = informational([f"{s.resource_type}/{s.id} {verb}"])
        elif ctx.prefer_return != "minimal":
            entry["resource"] = (await self.resources.render(ctx, [result.resource]))[0]
        entry["response"] = response
        return entry

    async def _read_entry(self, ctx: RequestContext, e: EntryRequest) -> dict[str, Any]:
        """A batch's read entry: its response, or its failure as the entry's status and OperationOutcome."""
        try:
            return await self._read_entry_on(ctx, e, None)
        except FhirVaultError as exc:
            return {"response": {"status": _status_line(exc.status),
                                 "outcome": operation_outcome(exc.message, code=exc.code)}}

    async def _read_entry_on(self, ctx: RequestContext, e: EntryRequest,
                             conn: AsyncConnection | None) -> dict[str, Any]:
        """The response entry of a GET/HEAD entry (see _read_answer); a HEAD's without the resource, as a
        HEAD outside a Bundle has no body."""
        answer = await self._read_answer(ctx, e, conn)
        if e.method == "HEAD":
            answer.pop("resource", None)
        return answer

    async def _read_answer(self, ctx: RequestContext, e: EntryRequest,
                           conn: AsyncConnection | None) -> dict[str, Any]:
        """The response entry of a GET/HEAD entry (read, vread or search), read on `conn` when given (a
        transaction's own connection). Raises what the read raises (NotFound, Gone, Invalid, Forbidden)."""
        if e.history:
            if conn is not None:
                # history reads its own snapshot, which would not hold this transaction's writes
                raise Invalid("a history is read in a batch, not in a transaction",
                              expression=f"Bundle.entry[{e.index}].request.url")
            return {"resource": await _history_entry(self.resources, ctx, e), "response": {"status": "200 OK"}}
        if e.rid is None:
            params = query_pairs(e.query, f"Bundle.entry[{e.index}].request.url's query")
            inner = await searchset_bundle(self.resources, ctx, e.rtype, params, conn=conn)
            return {"resource": inner, "response": {"status": "200 OK"}}
        summary, elements = _read_parameters(e)
        if e.vid:
            stored = await self.resources.vread(ctx, e.rtype, e.rid, e.vid, conn)
        else:
            stored = await self.resources.read(ctx, e.rtype, e.rid, conn)
        assert stored.content is not None
        if not_modified(stored, e.if_none_match, e.if_modified_since):
            return {"response": {"status": "304 Not Modified", "etag": f'W/"{stored.version_id}"',
                                 "lastModified": to_instant(stored.last_updated)}}
        return {
            "fullUrl": f"{ctx.base_url}/{e.rtype}/{e.rid}",
            "resource": subset((await self.resources.render(ctx, [stored.content], conn))[0], summary, elements),
            "response": {"status": "200 OK", "etag": f'W/"{stored.version_id}"',
                         "lastModified": to_instant(stored.last_updated)},
        }


def _entry_params(e: EntryRequest, allowed: tuple[str, ...], interaction: str) -> dict[str, str]:
    """The query of a read or history entry as {name: value}, as the interaction takes it outside a Bundle:
    a parameter it does not take, or one given twice, is a 400 naming it (they were ignored)."""
    where = f"Bundle.entry[{e.index}].request.url"
    given: dict[str, str] = {}
    for name, value in query_pairs(e.query, f"{where}'s query"):
        if name not in allowed:
            raise Invalid(f"{where}: {interaction} has no parameter {name!r} (it takes {', '.join(allowed)})",
                          expression=where)
        if name in given:
            raise Invalid(f"{where}: the {interaction} parameter {name!r} is given more than once", expression=where)
        given[name] = value
    return given


def _read_parameters(e: EntryRequest) -> tuple[str | None, list[str] | None]:
    """`_summary` and `_elements` of a read or vread entry, as a read outside a Bundle takes them."""
    q = _entry_params(e, ("_summary", "_elements"), "a read")
    elements = element_names(q["_elements"]) if "_elements" in q else None
    return summary_mode(q.get("_summary"), ("true", "text", "data", "false")), elements


_HISTORY_PARAMS = ("_count", "_offset", "_since", "_at", "_total", "_until", "_summary", "_elements")


async def _history_entry(resources: ResourceService, ctx: RequestContext, e: EntryRequest) -> dict[str, Any]:
    """The history Bundle a GET `Type/_history` or `Type/id/_history` entry asks for (R4 http.html#history),
    with the parameters history takes outside a Bundle."""
    q = _entry_params(e, _HISTORY_PARAMS, "history")
    count = whole_param("_count", q["_count"], 0, MAX_COUNT) if "_count" in q else DEFAULT_COUNT
    offset = whole_param("_offset", q["_offset"], 0) if "_offset" in q else 0
    elements = element_names(q["_elements"]) if "_elements" in q else None
    return await history_bundle(resources, ctx, e.rtype, e.rid, q.get("_since"), count, offset, q.get("_at"),
                                q.get("_total"), q.get("_until"), summary_mode(q.get("_summary")), elements)
