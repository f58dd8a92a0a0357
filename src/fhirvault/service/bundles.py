"""Batch and transaction Bundles: each entry through the ordinary use cases; a transaction is all or nothing."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhirvault.errors import FhirVaultError, Invalid, NotFound
from fhirvault.fhir.bundle import bundle as make_bundle
from fhirvault.fhir.outcome import operation_outcome
from fhirvault.fhir.patch import FHIRPATH_PATCH, JSON_PATCH, MERGE_PATCH, PatchDocument
from fhirvault.fhir.r4 import is_resource_type, is_valid_id, whole_number
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork
from fhirvault.service.resources import ResourceService, WriteResult, check_resource_body, new_id
from fhirvault.service.searchset import searchset_bundle
from fhirvault.service.timeutil import to_instant
from fhirvault.service.validation import relocated
from fhirvault.store.resources import StoredResource

# FHIR's processing order within a transaction.
METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
INTERACTION = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete"}
# The media types a Binary may carry a patch in (R4 http.html#transaction: PATCH entries).
BINARY_PATCH_TYPES = {"application/json-patch+json": JSON_PATCH, "application/merge-patch+json": MERGE_PATCH}
CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")


@dataclass
class EntryRequest:
    index: int
    method: str
    rtype: str
    rid: str | None
    vid: str | None
    query: str
    resource: Any
    full_url: str | None
    if_match: int | None
    if_none_exist: str | None
    # Filled in before any entry is processed: conditionals resolved to the ids they act on.
    existing: StoredResource | None = None  # conditional create that found its match
    create: bool = False  # a conditional update that creates
    delete_ids: list[str] = field(default_factory=list)

    @property
    def conditional(self) -> bool:
        """PUT, PATCH or DELETE addressed by search criteria instead of an id."""
        return self.rid is None and bool(self.query) and self.method in ("PUT", "PATCH", "DELETE")


def _parse_entry(index: int, entry: Any, base_url: str) -> EntryRequest:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        raise Invalid(f"{where} must be an object", expression=where)
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("method"), str) or not isinstance(
        request.get("url"), str
    ):
        raise Invalid(f"{where}.request needs a method and a url", expression=f"{where}.request")
    method = request["method"].upper()
    if method not in METHOD_ORDER:
        raise Invalid(f"{where}.request.method {method} is not supported", expression=f"{where}.request.method")
    url = request["url"]
    if url.startswith(base_url + "/"):
        url = url[len(base_url) + 1:]
    split = urlsplit(url)
    parts = [p for p in split.path.split("/") if p]
    if not parts or not is_resource_type(parts[0]):
        raise Invalid(f"{where}.request.url '{request['url']}' does not name a resource type",
                      expression=f"{where}.request.url")
    rid = parts[1] if len(parts) > 1 else None
    if rid is not None and method != "POST" and not is_valid_id(rid):  # as for the same URL outside a Bundle
        error = Invalid if method == "PUT" else NotFound
        raise error(f"{where}.request.url: '{rid}' is not a resource id", expression=f"{where}.request.url")
    if "%00" in split.query or "%00" in str(request.get("ifNoneExist")):
        raise Invalid(f"{where}.request holds a NUL character (%00) in its criteria", expression=f"{where}.request")
    vid = parts[3] if len(parts) > 3 and parts[2] == "_history" else None
    if_match = None
    if request.get("ifMatch"):
        if_match = parse_etag(request["ifMatch"])
    return EntryRequest(index, method, parts[0], rid, vid, split.query, entry.get("resource"),
                        entry.get("fullUrl"), if_match, request.get("ifNoneExist"))


def _processing_order(e: EntryRequest) -> tuple[int, bool, int]:
    """FHIR's order of methods; within one method Binaries last, so that a Binary whose securityContext
    names a resource of the same Bundle finds it written (the access check reads it), then Bundle order."""
    return METHOD_ORDER[e.method], e.rtype == "Binary", e.index


def parse_etag(value: str) -> int:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    version = whole_number(v.strip('"'))
    if version is None:
        raise Invalid(f"If-Match '{value}' is not a version ETag like W/\"3\"")
    return version


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
        body = json.loads(base64.b64decode(str(resource.get("data", "")), validate=True))
    except (binascii.Error, ValueError):
        raise Invalid(f"{where}.data must be base64 of a JSON patch document", expression=f"{where}.data") from None
    return PatchDocument(kind, body)


def conditional_references(node: Any, out: set[str]) -> set[str]:
    """Every `reference` value in `node` of the form `Type?criteria` (R4 http.html#trules)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                m = CONDITIONAL_REFERENCE.match(value)
                if m and is_resource_type(m.group(1)):
                    out.add(value)
            else:
                conditional_references(value, out)
    elif isinstance(node, list):
        for value in node:
            conditional_references(value, out)
    return out


def _replace_refs(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _replace_refs(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_refs(v, mapping) for v in node]
    if isinstance(node, str) and node in mapping:
        return mapping[node]
    return node


def _status_line(code: int) -> str:
    return {200: "200 OK", 201: "201 Created", 204: "204 No Content"}.get(code, str(code))


def refuse_overlaps(entries: list[EntryRequest]) -> None:
    """Invalid (400) when two entries of a transaction write the same resource, once conditionals are
    resolved: "If any resource identities (including resolved identities from conditional update/delete)
    overlap in steps 1-3, then the transaction SHALL fail" (R4 http.html#trules). A conditional create
    that found its match writes nothing."""
    seen: dict[str, int] = {}
    for e in entries:
        if e.method not in INTERACTION or e.existing is not None:
            continue
        for rid in e.delete_ids if e.conditional and e.method == "DELETE" else [e.rid] if e.rid else []:
            key = f"{e.rtype}/{rid}"
            if key in seen:
                raise Invalid(f"Bundle.entry[{e.index}] and Bundle.entry[{seen[key]}] both act on {key}; a "
                              "transaction acts on each resource once", expression=f"Bundle.entry[{e.index}]")
            seen[key] = e.index


class BundleService:
    def __init__(self, resources: ResourceService) -> None:
        self.resources = resources

    async def process(self, ctx: RequestContext, bundle: Any) -> dict[str, Any]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise Invalid("POST to the FHIR base takes a Bundle of type batch or transaction")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise Invalid(f"Bundle.type must be batch or transaction, not {kind!r}", expression="Bundle.type")
        raw_entries = bundle.get("entry") or []
        if not isinstance(raw_entries, list):
            raise Invalid("Bundle.entry must be a list", expression="Bundle.entry")
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
                out.append({"response": {"status": str(exc.status), "outcome": outcome}})
        return out

    async def _write_alone(self, ctx: RequestContext, entry: EntryRequest) -> WriteResult | None:
        self.resources.require(ctx, INTERACTION[entry.method], entry.rtype)

        async def work(uow: UnitOfWork) -> WriteResult | None:
            mapping = await self._prepare(uow, ctx, [entry])
            if entry.resource is not None:
                entry.resource = _replace_refs(entry.resource, mapping)
            return await self._write_entry(uow, ctx, entry)

        return await self.resources.in_transaction(ctx, work)

    async def _prepare(self, uow: UnitOfWork, ctx: RequestContext, entries: list[EntryRequest]) -> dict[str, str]:
        """Resolves what every entry acts on before any is processed, and returns the reference mapping:
        fullUrl -> `Type/id` of the resource the entry writes, `Type?criteria` -> the one match."""
        svc = self.resources
        mapping: dict[str, str] = {}
        for e in entries:
            if e.method == "POST":
                if e.rid:
                    raise Invalid(f"Bundle.entry[{e.index}]: POST goes to a type, not to {e.rtype}/{e.rid}")
                if e.if_none_exist:
                    e.existing = await svc.conditional_target_in(uow, ctx, e.rtype, e.if_none_exist, "If-None-Exist")
                e.rid = e.existing.id if e.existing else new_id()
            elif e.conditional and e.method == "PUT":
                resource = check_resource_body(e.resource, e.rtype)
                e.rid, e.create = await svc.conditional_update_target_in(uow, ctx, e.rtype, e.query, resource)
            elif e.conditional and e.method == "PATCH":
                e.rid = await svc.conditional_patch_id_in(uow, ctx, e.rtype, e.query)
            elif e.conditional:
                e.delete_ids = await svc.conditional_delete_ids_in(uow, ctx, e.rtype, e.query)
            if e.full_url and e.rid and e.method in ("POST", "PUT"):
                mapping[e.full_url] = f"{e.rtype}/{e.rid}"
        for e in entries:
            for ref in sorted(conditional_references(e.resource, set()) - set(mapping)):
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

        async def work(uow: UnitOfWork) -> list[tuple[EntryRequest, Any]]:
            mapping = await self._prepare(uow, ctx, entries)
            refuse_overlaps(entries)
            # What later entries will write: checks that need it (an Attachment naming a Binary of this
            # Bundle) wait for it, so the order of entries does not matter (R4 http.html#trules).
            uow.upcoming = {f"{e.rtype}/{e.rid}" for e in entries if e.method in ("POST", "PUT") and e.rid}
            results: list[tuple[EntryRequest, Any]] = []
            for e in sorted(entries, key=_processing_order):
                if e.resource is not None:
                    e.resource = _replace_refs(e.resource, mapping)
                if e.method in ("GET", "HEAD"):
                    continue
                results.append((e, await self._write_entry(uow, ctx, e)))
                uow.upcoming.discard(f"{e.rtype}/{e.rid}")
            return results

        written = dict((e.index, r) for e, r in await self.resources.in_transaction(ctx, work))
        out: list[dict[str, Any]] = []
        for e in entries:
            if e.method in ("GET", "HEAD"):
                out.append(await self._read_entry(ctx, e))
            else:
                out.append(await self._write_response(ctx, written[e.index]))
        return out

    async def _write_entry(self, uow: UnitOfWork, ctx: RequestContext, e: EntryRequest) -> WriteResult | None:
        try:
            return await self._write_entry_as_sent(uow, ctx, e)
        except Invalid as exc:
            raise relocated(exc, e.rtype, f"Bundle.entry[{e.index}].resource") from None

    async def _write_entry_as_sent(self, uow: UnitOfWork, ctx: RequestContext,
                                   e: EntryRequest) -> WriteResult | None:
        svc = self.resources
        if e.method == "POST":
            if e.existing is not None:
                return WriteResult(e.existing, created=False, existing=True)
            return await svc.create_in(uow, ctx, e.rtype, e.resource, rid=e.rid)
        if e.method == "DELETE" and e.conditional:
            for rid in e.delete_ids:
                await svc.delete_in(uow, ctx, e.rtype, rid)
            return None
        if not e.rid:
            raise Invalid(f"Bundle.entry[{e.index}]: {e.method} needs a url like {e.rtype}/[id] "
                          f"or {e.rtype}?[criteria]")
        if e.method == "PUT":
            if e.create:
                return await svc.create_in(uow, ctx, e.rtype, e.resource, rid=e.rid)
            resource = check_resource_body(e.resource, e.rtype)
            body = {**resource, "id": e.rid} if e.conditional else resource
            return await svc.update_in(uow, ctx, e.rtype, e.rid, body, e.if_match)
        if e.method == "PATCH":
            return await svc.patch_in(uow, ctx, e.rtype, e.rid, patch_document(e), e.if_match)
        await svc.delete_in(uow, ctx, e.rtype, e.rid, e.if_match)
        return None

    async def _write_response(self, ctx: RequestContext, result: WriteResult | None) -> dict[str, Any]:
        if result is None:
            return {"response": {"status": "204 No Content"}}
        s = result.stored
        status = 201 if result.created and not result.existing else 200
        rendered = (await self.resources.render(ctx, [result.resource]))[0]
        return {
            "fullUrl": f"{ctx.base_url}/{s.resource_type}/{s.id}",
            "resource": rendered,
            "response": {
                "status": _status_line(status),
                "location": f"{s.resource_type}/{s.id}/_history/{s.version_id}",
                "etag": f'W/"{s.version_id}"',
                "lastModified": to_instant(s.last_updated),
            },
        }

    async def _read_entry(self, ctx: RequestContext, e: EntryRequest) -> dict[str, Any]:
        try:
            if e.rid is None:
                params = parse_qsl(e.query, keep_blank_values=True)
                inner = await searchset_bundle(self.resources, ctx, e.rtype, params)
                return {"resource": inner, "response": {"status": "200 OK"}}
            if e.vid:
                stored = await self.resources.vread(ctx, e.rtype, e.rid, e.vid)
            else:
                stored = await self.resources.read(ctx, e.rtype, e.rid)
            assert stored.content is not None
            return {
                "fullUrl": f"{ctx.base_url}/{e.rtype}/{e.rid}",
                "resource": (await self.resources.render(ctx, [stored.content]))[0],
                "response": {"status": "200 OK", "etag": f'W/"{stored.version_id}"',
                             "lastModified": to_instant(stored.last_updated)},
            }
        except FhirVaultError as exc:
            return {"response": {"status": str(exc.status), "outcome": operation_outcome(exc.message, code=exc.code)}}


