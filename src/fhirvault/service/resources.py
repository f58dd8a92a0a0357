"""The resource use cases: create, read, vread, update, delete, history; one transaction each."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Awaitable, Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.clock import now_us
from fhirvault.errors import Conflict, Forbidden, Gone, Invalid, NotFound, PreconditionFailed, Unprocessable
from fhirvault.fhir.patch import PatchDocument, PatchError, apply_patch
from fhirvault.fhir.r4 import ID, is_resource_type, is_valid_id, resource_types, whole_number
from fhirvault.fhir.search_index import search_index
from fhirvault.fhir.subsetting import is_subsetted
from fhirvault.service.access import AccessPolicy, AllowAll, permitted_types
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import ReadPipeline, UnitOfWork, WritePipeline
from fhirvault.service.preconditions import Precondition, as_precondition
from fhirvault.service.search import SearchResult, conditional_matches, run_search, searchset
from fhirvault.service.timeutil import to_instant
from fhirvault.store.blobs import ContentRace
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource, VersionConflict

T = TypeVar("T")
MAX_RETRIES = 8
# Read-modify-write rounds before a resource that keeps changing is given up on.
MODIFY_ATTEMPTS = 20


@dataclass
class WriteResult:
    """What a write did: the version stored (or, for a conditional create that matched, the existing resource
    with `existing` set), and whether it created the resource."""

    stored: StoredResource
    created: bool
    existing: bool = False  # conditional create found a match; nothing was written

    @property
    def resource(self) -> dict[str, Any]:
        """The written (or matched) resource's content."""
        assert self.stored.content is not None
        return self.stored.content


def check_resource_body(body: Any, rtype: str | None) -> dict[str, Any]:
    """`body` as a resource of type `rtype` (None: any type): a JSON object whose resourceType is an R4 type
    matching the URL's, with an object `meta`. Raises Invalid naming what is wrong."""
    if not isinstance(body, dict):
        raise Invalid("The request body must be a JSON object holding a FHIR resource")
    declared = body.get("resourceType")
    if not isinstance(declared, str) or not declared:
        raise Invalid("The resource has no 'resourceType'", expression="resourceType")
    if not is_resource_type(declared):
        raise Invalid(f"'{declared}' is not an R4 resource type", expression="resourceType")
    if rtype is not None and declared != rtype:
        raise Invalid(f"The body's resourceType '{declared}' does not match the URL's '{rtype}'",
                      expression="resourceType")
    meta = body.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise Invalid("'meta' must be an object", expression=f"{declared}.meta")
    return body


def conditional_update_id(rtype: str, criteria: str, resource: dict[str, Any],
                          match: StoredResource | None) -> str | None:
    """The id a conditional update writes to (R4 http.html#cond-update), None for a create with a new id.

    One match: its id, and an id in the body must agree (else Invalid, 400). No match: the body's id
    (update as create) or None.
    """
    body_id = resource.get("id")
    if match is None:
        if body_id is not None and not is_valid_id(body_id):
            raise Invalid(f"'{body_id}' is not a valid resource id", expression=f"{rtype}.id")
        return body_id if isinstance(body_id, str) else None
    if body_id is not None and body_id != match.id:
        raise Invalid(f"The body's id '{body_id}' is not the id of the {rtype} that '{criteria}' matches "
                      f"({match.id})", expression=f"{rtype}.id")
    return match.id


def same_content(resource: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether `resource` as it would be stored says the same as the `stored` version, apart from the
    `meta.versionId` and `meta.lastUpdated` a write sets: same elements, same values, decimals with the
    same precision (key order aside)."""
    return _comparable(resource) == _comparable(stored)


def _comparable(resource: dict[str, Any]) -> bytes:
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    rest = {k: v for k, v in resource.items() if k != "meta"}
    return jsoncodec.dumps({**rest, "meta": meta} if meta else rest, sort_keys=True)


def new_id() -> str:
    """A new server-assigned resource id (a UUID4: valid R4 id, unguessable)."""
    return str(uuid.uuid4())


class ResourceService:
    """The resource use cases. `conditional_delete_max`: how many resources one conditional delete may remove."""

    def __init__(self, db: Database, store: ResourceStore, access: AccessPolicy | None = None,
                 conditional_delete_max: int = 1) -> None:
        self.db = db
        self.store = store
        self.access: AccessPolicy = access or AllowAll()
        self.conditional_delete_max = conditional_delete_max
        # What every written and every read resource passes through; see service/pipelines.py.
        self.write_pipeline = WritePipeline()
        self.read_pipeline = ReadPipeline()

    def require(self, ctx: RequestContext, interaction: str, rtype: str | None) -> None:
        """Forbidden unless the caller's scopes allow `interaction` (create, read, update, delete,
        search, history, ...) on `rtype` (None: the whole server); checked before anything is looked up."""
        self.access.require(ctx, interaction, rtype)

    # -- transactions -------------------------------------------------------------------------
    async def in_transaction(self, ctx: RequestContext, work: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """Run `work` in one write transaction, retried from the start when a concurrent writer won."""
        for attempt in range(MAX_RETRIES):
            uow: UnitOfWork | None = None
            try:
                async with self.db.write() as conn:
                    uow = UnitOfWork(conn)
                    result = await work(uow)
                    await self.finish_deferred(ctx, uow)
                    await self.write_pipeline.before_commit(ctx, uow)
                break
            except BaseException as exc:
                if uow is not None:
                    await uow.rolled_back()
                if not isinstance(exc, (VersionConflict, ContentRace)):
                    raise
                if attempt == MAX_RETRIES - 1:
                    raise Conflict("The resource is being changed by other requests; retry") from None
        assert uow is not None
        for action in uow.on_commit:
            action()
        await self.write_pipeline.committed(ctx, uow)
        return result

    async def finish_deferred(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """The deferred work of write steps, each followed by storing its resource's changed content as the
        same version (content and search index); see UnitOfWork. Run before the commit; earlier by a unit
        that reads what it wrote (a transaction Bundle's GET entries)."""
        while uow.deferred:
            resource, finish = uow.deferred.pop(0)
            await finish()
            stored = next(s for s in reversed(uow.written) if s.content is resource)
            await self.store.rewrite(uow.conn, stored, search_index(resource, ctx.base_url, self.store.text_index))

    # -- writes ---------------------------------------------------------------------------------
    async def create(self, ctx: RequestContext, rtype: str, body: Any,
                     if_none_exist: str | None = None) -> WriteResult:
        """R4 create (http.html#create), conditional when `if_none_exist` is given (http.html#ccreate: 0
        matches create, 1 returns it, several are 412). Checks create rights first; validation and
        the other write steps run in one transaction. Raises Invalid, Forbidden,
        PreconditionFailed."""
        self.access.require(ctx, "create", rtype)
        return await self.in_transaction(ctx, lambda uow: self.create_in(uow, ctx, rtype, body, if_none_exist))

    async def modify(self, ctx: RequestContext, rtype: str, rid: str, change: Callable[[dict[str, Any]], bool],
                     if_match: Precondition | int | None = None) -> WriteResult | None:
        """Read-modify-write of `rtype/rid`'s current version: `change` edits a copy in place and returns
        False when there is nothing to change (then nothing is written and None returned). The update is
        conditional on the version read, so a concurrent change is read again and changed again (at most
        MODIFY_ATTEMPTS rounds, then Conflict). With `if_match`, only that version may be changed
        (PreconditionFailed otherwise, FHIR R4 http.html#concurrency); any Precondition is checked against each
        version read. NotFound/Gone/Forbidden as `read`."""
        precondition = as_precondition(if_match)
        for _ in range(MODIFY_ATTEMPTS):
            current = await self.read(ctx, rtype, rid)
            assert current.content is not None
            if precondition is not None:
                precondition.check(rtype, rid, current)  # checked again on the version each round reads
            body = copy.deepcopy(current.content)
            if not change(body):
                return None
            try:
                return await self.update(ctx, rtype, rid, body, current.version_id)
            except (PreconditionFailed, Conflict):
                continue
        raise Conflict(f"{rtype}/{rid} kept changing while it was being updated; retry")

    async def create_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, body: Any,
                        if_none_exist: str | None = None, rid: str | None = None,
                        blob_id: str | None = None, precondition: Precondition | None = None) -> WriteResult:
        """Creates a resource (id `rid`, else a new one); with `if_none_exist`, only when nothing matches
        those criteria (the match is kept, R4 http.html#ccreate). `precondition` is judged as for a
        resource that does not exist (If-Match: 412), for a conditional update that creates."""
        resource = check_resource_body(body, rtype)
        if precondition is not None:
            precondition.check(rtype, rid or "(new)", None)
        if if_none_exist is not None:  # an empty one is refused (matches_in), never taken as "no condition"
            match = await self.conditional_create_target_in(uow, ctx, rtype, if_none_exist, "If-None-Exist")
            if match is not None:
                return WriteResult(match, created=False, existing=True)
        return await self._write(uow, ctx, rtype, rid or new_id(), resource, None, "POST", blob_id)

    # -- conditional interactions (R4 http.html: conditional create, update, patch and delete) ----------
    async def matches_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, criteria: str,
                         limit: int) -> list[StoredResource]:
        """Up to `limit` resources matching `criteria` (a search query string) that the caller may see.

        Raises Invalid for empty criteria, criteria of result parameters only, and any parameter the
        search does not support: a condition never silently matches everything.
        """
        return await conditional_matches(self.store, self.access, uow.conn, ctx, rtype, criteria, limit)

    async def conditional_target_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, criteria: str,
                                    what: str) -> StoredResource | None:
        """The one resource matching `criteria`, or None; several matches raise PreconditionFailed (412).
        Criteria may start with `?` or with `{rtype}?` (as HAPI's client writes If-None-Exist)."""
        criteria = criteria.removeprefix(f"{rtype}?")
        try:
            matches = await self.matches_in(uow, ctx, rtype, criteria, 2)
        except Invalid as exc:
            raise Invalid(f"{what}: {exc.message}", code=exc.code, expression=exc.expression or what) from None
        if len(matches) > 1:
            raise PreconditionFailed(f"{what} '{criteria}' matches more than one {rtype}; it must match at most one")
        return matches[0] if matches else None

    async def conditional_create_target_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, criteria: str,
                                           what: str) -> StoredResource | None:
        """As `conditional_target_in`, for an interaction that creates when nothing matches (If-None-Exist,
        conditional update): the search and the create it leads to are atomic, because every such
        transaction with the same type and criteria first takes one lock (`serialize_creates_in`); the
        second of two racing requests finds what the first created."""
        await self.serialize_creates_in(uow, [(rtype, criteria)])
        return await self.conditional_target_in(uow, ctx, rtype, criteria, what)

    async def serialize_creates_in(self, uow: UnitOfWork, conditions: list[tuple[str, str]]) -> None:
        """Takes the conditional-create lock of each (type, criteria), keyed by the criteria in a normal
        form (parameters sorted), in one global order so that two transactions never wait on each other."""
        keys = {f"conditional-create {rtype}?"
                + urlencode(sorted(parse_qsl(criteria.removeprefix(f"{rtype}?").lstrip("?"), keep_blank_values=True)))
                for rtype, criteria in conditions}
        for key in sorted(keys):
            await self.db.serialize(uow.conn, key)

    async def conditional_update(self, ctx: RequestContext, rtype: str, criteria: str, body: Any,
                                 if_match: Precondition | int | None = None) -> WriteResult:
        """`PUT [type]?criteria`: 0 matches create, 1 updates it, several -> 412."""
        self.access.require(ctx, "update", rtype)
        return await self.in_transaction(
            ctx, lambda uow: self.conditional_update_in(uow, ctx, rtype, criteria, body, if_match))

    async def conditional_update_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, criteria: str,
                                    body: Any, if_match: Precondition | int | None = None) -> WriteResult:
        """Conditional update inside a unit of work (see `conditional_update`)."""
        resource = check_resource_body(body, rtype)
        rid, create = await self.conditional_update_target_in(uow, ctx, rtype, criteria, resource)
        if create:
            return await self.create_in(uow, ctx, rtype, resource, rid=rid, precondition=as_precondition(if_match))
        return await self.update_in(uow, ctx, rtype, rid, {**resource, "id": rid}, if_match)

    async def conditional_update_target_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str,
                                           criteria: str, resource: dict[str, Any]) -> tuple[str, bool]:
        """The id a conditional update writes, and whether that is a create (R4 http.html#cond-update).

        Several matches raise PreconditionFailed; no match and a body id naming an existing resource
        too (the criteria did not select it, so it is not overwritten).
        """
        match = await self.conditional_create_target_in(uow, ctx, rtype, criteria, "The conditional update")
        target = conditional_update_id(rtype, criteria, resource, match)
        if target is None:
            self.access.require(ctx, "create", rtype)
            return new_id(), True
        if match is None:
            existing = await self.store.get(uow.conn, rtype, target)
            if existing is not None and not existing.deleted:
                raise PreconditionFailed(f"No {rtype} matches '{criteria}', yet {rtype}/{target} named by the "
                                         "body exists; a conditional update does not overwrite it")
        return target, False

    async def conditional_delete(self, ctx: RequestContext, rtype: str, criteria: str,
                                 if_match: Precondition | int | None = None) -> list[StoredResource]:
        """`DELETE [type]?criteria`: deletes every match, at most `conditional_delete_max` (more -> 412);
        a precondition (If-Match, ...) is checked on each match, and with no match If-Match fails (412)."""
        self.access.require(ctx, "delete", rtype)
        return await self.in_transaction(
            ctx, lambda uow: self.conditional_delete_in(uow, ctx, rtype, criteria, if_match))

    async def conditional_delete_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, criteria: str,
                                    if_match: Precondition | int | None = None) -> list[StoredResource]:
        """Conditional delete inside a unit of work; the deletion rows written."""
        ids = await self.conditional_delete_ids_in(uow, ctx, rtype, criteria)
        precondition = as_precondition(if_match)
        if not ids and precondition is not None:
            precondition.check(rtype, f"?{criteria}", None)
        deleted = [await self.delete_in(uow, ctx, rtype, rid, precondition) for rid in ids]
        return [d for d in deleted if d is not None]

    async def conditional_delete_ids_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str,
                                        criteria: str) -> list[str]:
        """The ids a conditional delete removes; more than `conditional_delete_max` raise PreconditionFailed."""
        cap = self.conditional_delete_max
        matches = await self.matches_in(uow, ctx, rtype, criteria, cap + 1)
        if len(matches) > cap:
            raise PreconditionFailed(
                f"The conditional delete '{criteria}' matches more than {cap} {rtype} resource"
                f"{'s' if cap != 1 else ''}, the most this server deletes at once")
        return [m.id for m in matches]

    async def conditional_patch_id_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, criteria: str) -> str:
        """The id of the one resource a conditional patch changes; none -> NotFound, several -> 412."""
        match = await self.conditional_target_in(uow, ctx, rtype, criteria, "The conditional patch")
        if match is None:
            raise NotFound(f"No {rtype} matches '{criteria}'; nothing to patch")
        return match.id

    # -- patch (R4 http.html#patch) ---------------------------------------------------------------------
    async def patch(self, ctx: RequestContext, rtype: str, rid: str, document: PatchDocument,
                    if_match: Precondition | int | None = None) -> WriteResult:
        """PATCH [type]/[id]: the patch applied to the current version and written as an update."""
        self.access.require(ctx, "update", rtype)
        return await self.in_transaction(ctx, lambda uow: self.patch_in(uow, ctx, rtype, rid, document, if_match))

    async def conditional_patch(self, ctx: RequestContext, rtype: str, criteria: str, document: PatchDocument,
                                if_match: Precondition | int | None = None) -> WriteResult:
        """PATCH [type]?criteria: the one match patched; none -> 404, several -> 412."""
        self.access.require(ctx, "update", rtype)

        async def work(uow: UnitOfWork) -> WriteResult:
            rid = await self.conditional_patch_id_in(uow, ctx, rtype, criteria)
            return await self.patch_in(uow, ctx, rtype, rid, document, if_match)

        return await self.in_transaction(ctx, work)

    async def patch_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str, document: PatchDocument,
                       if_match: Precondition | int | None = None) -> WriteResult:
        """Applies `document` to the current version; the result goes through `update_in` like any update.

        Raises NotFound/Gone, PreconditionFailed (If-Match), Invalid (malformed patch, 400),
        Unprocessable (a patch that does not apply, 422), and whatever the update path raises.
        """
        if rtype == "Binary":
            raise Invalid("A Binary is not patched; PUT its new content to Binary/[id]")
        current = await self.store.get(uow.conn, rtype, rid, for_update=True)
        current = await self._visible(ctx, uow.conn, rtype, rid, current, "read")
        assert current.content is not None
        await self._check_if_match(ctx, uow.conn, rtype, rid, current, if_match, "update")
        try:
            patched = apply_patch(current.content, document)
        except PatchError as exc:
            error = Invalid if exc.malformed else Unprocessable
            raise error(exc.message, expression=exc.expression) from None
        return await self.update_in(uow, ctx, rtype, rid, patched, current.version_id, method="PATCH")

    async def update(self, ctx: RequestContext, rtype: str, rid: str, body: Any,
                     if_match: Precondition | int | None = None) -> WriteResult:
        """R4 update (http.html#update; update as create for an unknown id), with the write precondition
        `if_match`. Raises Invalid (body, id mismatch), Forbidden, PreconditionFailed, Conflict."""
        self.access.require(ctx, "update", rtype)
        return await self.in_transaction(ctx, lambda uow: self.update_in(uow, ctx, rtype, rid, body, if_match))

    async def update_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str, body: Any,
                        if_match: Precondition | int | None = None, blob_id: str | None = None,
                        method: str = "PUT") -> WriteResult:
        """The update inside an open unit of work `uow` (a transaction or Bundle); `blob_id` attaches staged
        Binary content, `method` names the interaction for history."""
        resource = check_resource_body(body, rtype)
        if not is_valid_id(rid):
            raise Invalid(f"'{rid}' is not a valid resource id ({ID})")
        if "id" not in resource:
            raise Invalid("An update must carry the resource's id in the body", expression=f"{rtype}.id")
        if resource["id"] != rid:
            raise Invalid(f"The body's id '{resource['id']}' does not match the URL's id '{rid}'",
                          expression=f"{rtype}.id")
        current = await self.store.get(uow.conn, rtype, rid, for_update=True)
        await self._check_if_match(ctx, uow.conn, rtype, rid, current, if_match, "update")
        return await self._write(uow, ctx, rtype, rid, resource, current, method, blob_id)

    async def _check_if_match(self, ctx: RequestContext, conn: AsyncConnection, rtype: str, rid: str,
                              current: StoredResource | None, if_match: Precondition | int | None,
                              action: str) -> None:
        """PreconditionFailed (412) unless the current version (a missing or deleted resource has none)
        satisfies the precondition (If-Match, If-None-Match, If-Unmodified-Since; RFC 9110 13.1). The
        caller's rights are checked first, so a resource it may not reach answers 404 (or 403) as
        everywhere, never a 412 telling that it exists and which version it is at."""
        precondition = as_precondition(if_match)
        if precondition is None:
            return
        if current is not None and not current.deleted and current.content is not None:
            await self._check_change(ctx, conn, current.content, action)
        precondition.check(rtype, rid, current)

    async def delete(self, ctx: RequestContext, rtype: str, rid: str,
                     if_match: Precondition | int | None = None) -> StoredResource | None:
        """R4 delete (http.html#delete) with the write precondition `if_match`: a deletion version, or None
        when there was nothing to delete. Raises Forbidden, PreconditionFailed."""
        self.access.require(ctx, "delete", rtype)
        return await self.in_transaction(ctx, lambda uow: self.delete_in(uow, ctx, rtype, rid, if_match))

    async def delete_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str,
                        if_match: Precondition | int | None = None) -> StoredResource | None:
        """Deletes `rtype/rid` (None when there is nothing to delete); with `if_match`, only that version
        (PreconditionFailed otherwise, as for an update)."""
        current = await self.store.get(uow.conn, rtype, rid, for_update=True)
        await self._check_if_match(ctx, uow.conn, rtype, rid, current, if_match, "delete")
        if current is None or current.deleted:
            if getattr(ctx.principal, "patient", None):
                # A patient-context client gets 404 for another patient's resource (_check_change); an id that
                # does not exist (or no longer) answers the same, or the two would tell which ids exist.
                raise NotFound(f"{rtype}/{rid} is not known")
            return None
        if current.content is not None:
            await self._check_change(ctx, uow.conn, current.content, "delete")
        stored = StoredResource(rtype, rid, current.version_id + 1, now_us(), True, None, None, "DELETE")
        await self.store.write(uow.conn, stored, current.version_id, None)
        return stored

    async def _write(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str,
                     resource: dict[str, Any], current: StoredResource | None, method: str,
                     blob_id: str | None = None) -> WriteResult:
        if is_subsetted(resource):
            # What _summary or _elements gave is part of the resource: written back, it dropped every element
            # it left out (R4 search.html#summary; HAPI FHIR refuses it alike).
            raise Invalid(f"The {rtype} sent is tagged SUBSETTED (meta.tag): it holds only the elements a _summary "
                          "or _elements read kept, and writing it would drop the others; read the whole resource, "
                          "change that, and write it", expression=f"{rtype}.meta.tag")
        resource = copy.deepcopy(resource)
        resource["id"] = rid
        if current is not None and current.content is not None and not current.deleted:
            await self._check_change(ctx, uow.conn, current.content, "update")
        elif current is not None and current.deleted:
            # Re-creating a deleted id is judged against its last live version: a caller who could not
            # have changed that one must not take the id over (and with it what was bound to it).
            before = await self.store.get_version(uow.conn, rtype, rid, current.version_id - 1)
            if before is not None and before.content is not None:
                await self._check_change(ctx, uow.conn, before.content, "update")
        if current is not None and current.content is not None and not current.deleted:
            uow.replacing[f"{rtype}/{rid}"] = current.content
        await self.write_pipeline.before_store(ctx, uow, resource)
        if not await self.access.can_see(ctx, uow.conn, resource, "create" if method == "POST" else "update"):
            raise Forbidden(_outside_reach(ctx, rtype, rid if current is not None else None))
        if current is not None and not current.deleted and current.content is not None \
                and blob_id == current.blob_id \
                and not any(pending is resource for pending, _ in uow.deferred) \
                and same_content(resource, current.content):
            # Nothing changes: no new version (as HAPI FHIR and Medplum answer an unchanged update); the
            # answer is the current version, so history lists only real changes. A Binary's bytes are the
            # same when the upload settled on the blob the current version holds (equal SHA-256 and size,
            # store.blobs.settle) or are inline in both; the blob's reference is counted only when a
            # version is inserted, so none is left over.
            return WriteResult(current, created=False)
        version = 1 if current is None else current.version_id + 1
        ts = now_us()
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = to_instant(ts)
        resource["meta"] = meta
        stored = StoredResource(rtype, rid, version, ts, False, resource, blob_id, method)
        await self.store.write(uow.conn, stored, current.version_id if current else None,
                               search_index(resource, ctx.base_url, self.store.text_index))
        uow.committed.append(resource)
        uow.written.append(stored)
        return WriteResult(stored, created=current is None or current.deleted)

    async def _check_change(self, ctx: RequestContext, conn: AsyncConnection, current: dict[str, Any],
                            interaction: str) -> None:
        """Refuses changing a stored resource: 404 when the caller may not even read it, else 403."""
        if await self.access.can_see(ctx, conn, current, interaction):
            return
        ref = f"{current['resourceType']}/{current.get('id')}"
        if await self.access.can_see(ctx, conn, current, "read"):
            why = ("its securityContext needs update rights on the resource it names"
                   if current["resourceType"] == "Binary" else
                   "it lies in other patients' compartments too; a patient-context client changes only resources "
                   "of its own patient alone")
            raise Forbidden(f"This client may read {ref} but not {interaction} it ({why})")
        raise NotFound(f"{ref} is not known")

    # -- reads ----------------------------------------------------------------------------------
    async def read(self, ctx: RequestContext, rtype: str, rid: str,
                   conn: AsyncConnection | None = None) -> StoredResource:
        """R4 read (http.html#read): the current version, on `conn` when given (a write transaction reading
        what it wrote). Raises NotFound (unknown, or hidden from this caller) or Gone (deleted)."""
        self.access.require(ctx, "read", rtype)
        async with (nullcontext(conn) if conn is not None else self.db.read()) as conn:
            stored = await self.store.get(conn, rtype, rid)
            return await self._visible(ctx, conn, rtype, rid, stored, "read")

    async def vread(self, ctx: RequestContext, rtype: str, rid: str, vid: str,
                    conn: AsyncConnection | None = None) -> StoredResource:
        """R4 vread (http.html#vread): version `vid`, on `conn` when given. Raises NotFound for an unknown
        or hidden version."""
        self.access.require(ctx, "vread", rtype)
        version = whole_number(vid)
        if version is None or str(version) != vid:  # ids are strings: `01` names no version
            raise NotFound(f"{rtype}/{rid} has no version '{vid}'")
        async with (nullcontext(conn) if conn is not None else self.db.read()) as conn:
            stored = await self.store.get_version(conn, rtype, rid, version)
            if stored is None:
                raise NotFound(f"{rtype}/{rid} has no version {vid}")
            if stored.deleted:
                # Access to a deleted version is judged by the version before it.
                before = await self.store.get_version(conn, rtype, rid, version - 1)
                if before and before.content and not await self.access.can_see(ctx, conn, before.content, "vread"):
                    raise NotFound(f"{rtype}/{rid} has no version {vid}")
                raise Gone(f"Version {vid} of {rtype}/{rid} is a deletion")
            try:
                return await self._visible(ctx, conn, rtype, rid, stored, "vread")
            except NotFound:
                # The same words as for a version that does not exist: "is not known" for the versions a
                # hidden resource has, against "has no version" above them, told which ids exist and how
                # often they changed.
                raise NotFound(f"{rtype}/{rid} has no version {vid}") from None

    async def current_life_began(self, rtype: str, rid: str) -> int | None:
        """When the present life of rtype/rid began, if it was ever deleted and re-created (microseconds
        of the last deletion); None when the id was never deleted. Anything keyed by the id from before
        (ingestion jobs) belongs to the earlier life and must not be shown to the new owner."""
        async with self.db.read() as conn:
            return await self.store.last_deletion(conn, rtype, rid)

    async def _visible(self, ctx: RequestContext, conn: AsyncConnection, rtype: str, rid: str,
                       stored: StoredResource | None, interaction: str) -> StoredResource:
        if stored is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        if stored.deleted:
            # Whether a deletion may be told depends on the last content before it.
            before = await self.store.get_version(conn, rtype, rid, stored.version_id - 1)
            if before and before.content and not await self.access.can_see(ctx, conn, before.content, interaction):
                raise NotFound(f"{rtype}/{rid} is not known")
            raise Gone(f"{rtype}/{rid} was deleted")
        if stored.content is not None and not await self.access.can_see(ctx, conn, stored.content, interaction):
            raise NotFound(f"{rtype}/{rid} is not known")
        return stored

    async def search(self, ctx: RequestContext, rtype: str | None, params: list[tuple[str, str]],
                     compartment: str | None = None, conn: AsyncConnection | None = None) -> SearchResult:
        """The search interaction on `rtype` (None: system search), optionally within the compartment
        of `compartment` (`Patient/1`), on `conn` when given; see `fhirvault.service.search.run_search`."""
        return await run_search(self.db, self.store, self.access, ctx, rtype, params, compartment, self.render,
                                conn)

    async def searchset(self, ctx: RequestContext, result: SearchResult) -> dict[str, Any]:
        """The searchset Bundle of a search result, resources rendered through the read pipeline."""
        return await searchset(self.render, ctx, result)

    async def history(self, ctx: RequestContext, rtype: str | None, rid: str | None, since_us: int | None,
                      count: int, offset: int, at: tuple[int, int] | None = None, until_us: int | None = None,
                      with_total: bool = True) -> tuple[list[StoredResource], int | None]:
        """History of one resource, a type, or the system (rtype/rid None): one page of versions newest
        first and the total (None unless `with_total`), both counting only versions the caller may see,
        with the access rules inside the query (each version judged by its own content). `since_us`:
        `_since`; `at`: `_at` as [start, end) microseconds; `until_us`: the snapshot paging keeps to.
        Raises Forbidden, NotFound."""
        self.access.require(ctx, "history", rtype)
        types = None
        if rtype is None:
            types = permitted_types(self.access, ctx, "history", sorted(resource_types()))
        async with self.db.read(snapshot=True) as conn:
            if rtype and rid:
                current = await self.store.get(conn, rtype, rid)
                # A deleted resource keeps its history (R4 http.html#history); a hidden one, deleted or not, is
                # NotFound as if it never existed (an empty page would tell that it did).
                with suppress(Gone):
                    await self._visible(ctx, conn, rtype, rid, current, "history")
            return await self.store.history(conn, rtype, rid, since_us, count, offset, at,
                                            self.access.query_restriction(ctx), types, until_us, with_total)

    async def render(self, ctx: RequestContext, resources: list[dict[str, Any]],
                     conn: AsyncConnection | None = None) -> list[dict[str, Any]]:
        """Copies of stored resources, passed through the read pipeline (for example URL signing); `conn`,
        when given, is the open connection they were read on, which the pipeline's look-ups then use."""
        return await self.read_pipeline.render(ctx, resources, conn)


def _outside_reach(ctx: RequestContext, rtype: str, rid: str | None) -> str:
    """Why a write that would leave the resource outside what the caller may change is refused, and what to
    do: a patient-context client writes only into its patient's compartment (R4 CompartmentDefinition
    patient); a Binary's securityContext needs update rights on what it names. `rid` None: a new resource."""
    what = f"{rtype}/{rid}" if rid else f"The new {rtype}"
    patient = getattr(ctx.principal, "patient", None)
    if patient and rtype == "Binary":
        return (f"{what} as sent would lie outside {patient}'s compartment, the only one this client writes "
                f"into: give it the securityContext {patient} (raw uploads: the header X-Security-Context: "
                f"{patient}), or another resource of that compartment")
    if patient:
        return (f"{what} as sent would lie outside {patient}'s compartment, the only one this client writes "
                f"into: it must refer to {patient} (e.g. subject or patient), and to no other patient")
    return f"{what} as sent names a securityContext this client may not update"

