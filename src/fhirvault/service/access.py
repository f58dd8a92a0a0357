"""The access decision points of the use cases; security/ provides the real policy."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import Forbidden
from fhirvault.service.context import RequestContext
from fhirvault.store.search_sql import Restriction


class AccessPolicy(Protocol):
    """Asked before every interaction. `interaction` is one of create, read, vread, update, delete,
    search, history (and binary-access-read / binary-access-write).

    `require` checks the caller's scopes for a resource type before anything is looked up and raises
    Forbidden. `can_see` judges one resource for an interaction; it is async and gets the open
    connection because a Binary's securityContext may point at a resource that must be looked up
    (inside a write transaction, the same connection sees the transaction's own writes). The
    service answers a resource the caller may not read with 404, and one it may read but not change
    with 403."""

    def require(self, ctx: RequestContext, interaction: str, resource_type: str | None) -> None:
        """Raises Forbidden unless the caller's scopes allow `interaction` on `resource_type` (None: the whole
        server)."""

    async def can_see(self, ctx: RequestContext, conn: AsyncConnection, resource: dict[str, Any],
                      interaction: str = "read") -> bool:
        """Whether the caller may do `interaction` on this resource (a dict as stored), looking up what it
        needs on `conn`."""

    async def can_see_each(self, ctx: RequestContext, conn: AsyncConnection, resources: list[dict[str, Any]],
                           interaction: str = "read") -> list[bool]:
        """`can_see` for each of `resources` (same decisions, same order), in a number of queries that
        does not grow with the number of resources."""
        ...

    def search_restriction(self, ctx: RequestContext, resource_type: str) -> list[str] | None:
        """Compartment targets (`Patient/1`) a search must stay within; None for no restriction."""
        ...

    def reads_every_binary(self, ctx: RequestContext) -> bool:
        """Whether the caller may read every Binary whatever its securityContext, so that the existence of
        a Binary alone decides whether its URL is signed (no content needs reading)."""
        ...

    def query_restriction(self, ctx: RequestContext) -> Restriction | None:
        """The caller's read rules as a Restriction applied inside search and history queries (so that
        pages are full and totals count only what the caller may read); None for no restriction. It must
        agree with `can_see(..., "search")` for every resource of a type the caller may search, and with
        `can_see(..., "history")` for every version (judged by its own content) of a type it may read
        the history of."""
        ...


class AllowAll:
    """Trusted internal callers (background jobs, command line)."""

    def require(self, ctx: RequestContext, interaction: str, resource_type: str | None) -> None:
        """Never refuses."""
        return None

    async def can_see(self, ctx: RequestContext, conn: AsyncConnection, resource: dict[str, Any],
                      interaction: str = "read") -> bool:
        """Always True."""
        return True

    async def can_see_each(self, ctx: RequestContext, conn: AsyncConnection, resources: list[dict[str, Any]],
                           interaction: str = "read") -> list[bool]:
        """Every resource may be seen."""
        return [True] * len(resources)

    def search_restriction(self, ctx: RequestContext, resource_type: str) -> list[str] | None:
        """None: no compartment restriction."""
        return None

    def reads_every_binary(self, ctx: RequestContext) -> bool:
        """True: nothing is hidden."""
        return True

    def query_restriction(self, ctx: RequestContext) -> Restriction | None:
        """None: no restriction inside queries."""
        return None


def permitted_types(access: AccessPolicy, ctx: RequestContext, interaction: str, among: list[str]) -> list[str]:
    """The types of `among` on which the caller's scopes allow `interaction` (those `require` lets pass),
    for interactions over many types at once (system search, system history)."""
    out = []
    for rtype in among:
        try:
            access.require(ctx, interaction, rtype)
        except Forbidden:
            continue
        out.append(rtype)
    return out
