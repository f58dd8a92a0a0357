"""The resource use cases: create, read, vread, update, delete, history; one transaction each."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.clock import now_us
from fhirvault.errors import Conflict, Forbidden, Gone, Invalid, NotFound, PreconditionFailed
from fhirvault.fhir.r4 import ID, is_resource_type, is_valid_id
from fhirvault.fhir.search_index import search_index
from fhirvault.service.access import AccessPolicy, AllowAll
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import ReadPipeline, UnitOfWork, WritePipeline
from fhirvault.service.search import SearchResult, conditional_matches, run_search, searchset
from fhirvault.service.timeutil import to_instant
from fhirvault.store.database import Database
from fhirvault.store.resources import ResourceStore, StoredResource, VersionConflict

T = TypeVar("T")
MAX_RETRIES = 8
# Read-modify-write rounds before a resource that keeps changing is given up on.
MODIFY_ATTEMPTS = 20


@dataclass
class WriteResult:
    stored: StoredResource
    created: bool
    existing: bool = False  # conditional create found a match; nothing was written

    @property
    def resource(self) -> dict[str, Any]:
        assert self.stored.content is not None
        return self.stored.content


def check_resource_body(body: Any, rtype: str | None) -> dict[str, Any]:
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


def new_id() -> str:
    return str(uuid.uuid4())


class ResourceService:
    def __init__(self, db: Database, store: ResourceStore, access: AccessPolicy | None = None) -> None:
        self.db = db
        self.store = store
        self.access: AccessPolicy = access or AllowAll()
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
                    await self._finish_deferred(ctx, uow)
                break
            except BaseException as exc:
                if uow is not None:
                    await uow.rolled_back()
                if not isinstance(exc, VersionConflict):
                    raise
                if attempt == MAX_RETRIES - 1:
                    raise Conflict("The resource is being changed by other requests; retry") from None
        assert uow is not None
        await self.write_pipeline.committed(ctx, uow)
        return result

    async def _finish_deferred(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """The deferred work of write steps, each followed by storing its resource's changed content as the
        same version (content and search index); see UnitOfWork."""
        while uow.deferred:
            resource, finish = uow.deferred.pop(0)
            await finish()
            stored = next(s for s in reversed(uow.written) if s.content is resource)
            await self.store.rewrite(uow.conn, stored, search_index(resource, ctx.base_url))

    # -- writes ---------------------------------------------------------------------------------
    async def create(self, ctx: RequestContext, rtype: str, body: Any,
                     if_none_exist: str | None = None) -> WriteResult:
        self.access.require(ctx, "create", rtype)
        return await self.in_transaction(ctx, lambda uow: self.create_in(uow, ctx, rtype, body, if_none_exist))

    async def modify(self, ctx: RequestContext, rtype: str, rid: str, change: Callable[[dict[str, Any]], bool],
                     if_match: int | None = None) -> WriteResult | None:
        """Read-modify-write of `rtype/rid`'s current version: `change` edits a copy in place and returns
        False when there is nothing to change (then nothing is written and None returned). The update is
        conditional on the version read, so a concurrent change is read again and changed again (at most
        MODIFY_ATTEMPTS rounds, then Conflict). With `if_match`, only that version may be changed
        (PreconditionFailed otherwise, FHIR R4 http.html#concurrency). NotFound/Gone/Forbidden as `read`."""
        for _ in range(MODIFY_ATTEMPTS):
            current = await self.read(ctx, rtype, rid)
            assert current.content is not None
            body = copy.deepcopy(current.content)
            if not change(body):
                return None
            try:
                return await self.update(ctx, rtype, rid, body, current.version_id if if_match is None else if_match)
            except (PreconditionFailed, Conflict):
                if if_match is not None:
                    raise
        raise Conflict(f"{rtype}/{rid} kept changing while it was being updated; retry")

    async def create_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, body: Any,
                        if_none_exist: str | None = None, rid: str | None = None,
                        blob_id: str | None = None) -> WriteResult:
        resource = check_resource_body(body, rtype)
        if if_none_exist:
            matches = await conditional_matches(self.store, self.access, uow.conn, ctx, rtype, if_none_exist)
            if len(matches) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist '{if_none_exist}' matched {len(matches)} resources; it must match at most one")
            if matches:
                return WriteResult(matches[0], created=False, existing=True)
        return await self._write(uow, ctx, rtype, rid or new_id(), resource, None, "POST", blob_id)

    async def update(self, ctx: RequestContext, rtype: str, rid: str, body: Any,
                     if_match: int | None = None) -> WriteResult:
        self.access.require(ctx, "update", rtype)
        return await self.in_transaction(ctx, lambda uow: self.update_in(uow, ctx, rtype, rid, body, if_match))

    async def update_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str, body: Any,
                        if_match: int | None = None, blob_id: str | None = None) -> WriteResult:
        resource = check_resource_body(body, rtype)
        if not is_valid_id(rid):
            raise Invalid(f"'{rid}' is not a valid resource id ({ID})")
        if "id" not in resource:
            raise Invalid("An update must carry the resource's id in the body", expression=f"{rtype}.id")
        if resource["id"] != rid:
            raise Invalid(f"The body's id '{resource['id']}' does not match the URL's id '{rid}'",
                          expression=f"{rtype}.id")
        current = await self.store.get(uow.conn, rtype, rid, for_update=True)
        if if_match is not None:
            if current is None or current.deleted:
                raise PreconditionFailed(f"If-Match W/\"{if_match}\" given but {rtype}/{rid} does not exist")
            if current.version_id != if_match:
                raise PreconditionFailed(
                    f"If-Match W/\"{if_match}\" does not match the current version {current.version_id} "
                    f"of {rtype}/{rid}")
        return await self._write(uow, ctx, rtype, rid, resource, current, "PUT", blob_id)

    async def delete(self, ctx: RequestContext, rtype: str, rid: str) -> StoredResource | None:
        self.access.require(ctx, "delete", rtype)
        return await self.in_transaction(ctx, lambda uow: self.delete_in(uow, ctx, rtype, rid))

    async def delete_in(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str) -> StoredResource | None:
        current = await self.store.get(uow.conn, rtype, rid, for_update=True)
        if current is None or current.deleted:
            return None
        if current.content is not None:
            await self._check_change(ctx, uow.conn, current.content, "delete")
        stored = StoredResource(rtype, rid, current.version_id + 1, now_us(), True, None, None, "DELETE")
        await self.store.write(uow.conn, stored, current.version_id, None)
        return stored

    async def _write(self, uow: UnitOfWork, ctx: RequestContext, rtype: str, rid: str,
                     resource: dict[str, Any], current: StoredResource | None, method: str,
                     blob_id: str | None = None) -> WriteResult:
        resource = copy.deepcopy(resource)
        resource["id"] = rid
        if current is not None and current.content is not None and not current.deleted:
            await self._check_change(ctx, uow.conn, current.content, "update")
        await self.write_pipeline.before_store(ctx, uow, resource)
        if not await self.access.can_see(ctx, uow.conn, resource, "create" if method == "POST" else "update"):
            raise Forbidden(f"{rtype}/{rid} as sent would be outside what this client may change "
                            "(another patient's compartment, or a securityContext it may not update)")
        version = 1 if current is None else current.version_id + 1
        ts = now_us()
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = to_instant(ts)
        resource["meta"] = meta
        stored = StoredResource(rtype, rid, version, ts, False, resource, blob_id, method)
        await self.store.write(uow.conn, stored, current.version_id if current else None,
                               search_index(resource, ctx.base_url))
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
            raise Forbidden(f"This client may read {ref} but not {interaction} it "
                            "(its securityContext needs update rights on the resource it names)")
        raise NotFound(f"{ref} is not known")

    # -- reads ----------------------------------------------------------------------------------
    async def read(self, ctx: RequestContext, rtype: str, rid: str) -> StoredResource:
        self.access.require(ctx, "read", rtype)
        async with self.db.read() as conn:
            stored = await self.store.get(conn, rtype, rid)
            return await self._visible(ctx, conn, rtype, rid, stored, "read")

    async def vread(self, ctx: RequestContext, rtype: str, rid: str, vid: str) -> StoredResource:
        self.access.require(ctx, "vread", rtype)
        if not vid.isdigit():
            raise NotFound(f"{rtype}/{rid} has no version '{vid}'")
        async with self.db.read() as conn:
            stored = await self.store.get_version(conn, rtype, rid, int(vid))
            if stored is None:
                raise NotFound(f"{rtype}/{rid} has no version {vid}")
            if stored.deleted:
                # Access to a deleted version is judged by the version before it.
                before = await self.store.get_version(conn, rtype, rid, int(vid) - 1)
                if before and before.content and not await self.access.can_see(ctx, conn, before.content, "vread"):
                    raise NotFound(f"{rtype}/{rid} has no version {vid}")
                raise Gone(f"Version {vid} of {rtype}/{rid} is a deletion")
            return await self._visible(ctx, conn, rtype, rid, stored, "vread")

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
                     compartment: str | None = None) -> SearchResult:
        """The search interaction on `rtype` (None: system search), optionally within the compartment
        of `compartment` (`Patient/1`); see `fhirvault.service.search.run_search`."""
        return await run_search(self.db, self.store, self.access, ctx, rtype, params, compartment)

    async def searchset(self, ctx: RequestContext, result: SearchResult) -> dict[str, Any]:
        """The searchset Bundle of a search result, resources rendered through the read pipeline."""
        return await searchset(self.render, ctx, result)

    async def history(self, ctx: RequestContext, rtype: str | None, rid: str | None, since_us: int | None,
                      count: int, offset: int, at: tuple[int, int] | None = None
                      ) -> tuple[list[StoredResource], int]:
        self.access.require(ctx, "history", rtype)
        async with self.db.read() as conn:
            if rtype and rid:
                current = await self.store.get(conn, rtype, rid)
                if current is None:
                    raise NotFound(f"{rtype}/{rid} is not known")
                if not current.deleted:
                    await self._visible(ctx, conn, rtype, rid, current, "history")
            rows, total = await self.store.history(conn, rtype, rid, since_us, count, offset, at)
            visible = [r for r in rows if await self._history_row_visible(ctx, conn, r)]
        return visible, total - (len(rows) - len(visible))

    async def _history_row_visible(self, ctx: RequestContext, conn: AsyncConnection, row: StoredResource) -> bool:
        content = row.content
        if content is None:  # a deletion is judged by the version before it
            before = await self.store.get_version(conn, row.resource_type, row.id, row.version_id - 1)
            content = before.content if before else None
        return content is None or await self.access.can_see(ctx, conn, content, "history")

    async def render(self, ctx: RequestContext, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Copies of stored resources, passed through the read pipeline (for example URL signing)."""
        # A JSON round trip copies plain JSON data several times faster than deepcopy.
        out = [jsoncodec.loads(jsoncodec.dumps(r)) for r in resources]
        await self.read_pipeline.after_read(ctx, out)
        return out
