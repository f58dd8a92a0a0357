"""Extension points of the resource pipeline: work done to a resource before it is stored and after it is read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from fhirvault.service.context import RequestContext

if TYPE_CHECKING:
    from fhirvault.service.resources import UnitOfWork


class WriteHook(Protocol):
    """Runs inside the write transaction (`uow.conn`), before the version is stored; may change `resource`
    in place, may raise a domain error to refuse the write, and may defer work that needs the unit's later
    writes (`uow.defer`)."""

    async def before_write(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None: ...


class AfterCommitHook(Protocol):
    """Runs after a write transaction committed (for example to schedule background work)."""

    async def after_commit(self, ctx: RequestContext, resource: dict[str, Any]) -> None: ...


class ReadHook(Protocol):
    """Rewrites copies of stored resources on their way out (never the stored rows)."""

    async def after_read(self, ctx: RequestContext, resources: list[dict[str, Any]]) -> None: ...
