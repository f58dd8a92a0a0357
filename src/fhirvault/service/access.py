"""The access decision points of the use cases; security/ provides the real policy."""

from __future__ import annotations

from typing import Any, Protocol

from fhirvault.service.context import RequestContext


class AccessPolicy(Protocol):
    """Asked before every interaction. `interaction` is one of create, read, vread, update, delete,
    search, history. Raises Forbidden/NotFound to refuse."""

    def require(self, ctx: RequestContext, interaction: str, resource_type: str | None) -> None: ...

    def can_see(self, ctx: RequestContext, resource: dict[str, Any]) -> bool: ...

    def search_restriction(self, ctx: RequestContext, resource_type: str) -> list[str] | None:
        """Compartment targets (`Patient/1`) a search must stay within; None for no restriction."""
        ...


class AllowAll:
    """Trusted internal callers (background jobs, command line)."""

    def require(self, ctx: RequestContext, interaction: str, resource_type: str | None) -> None:
        return None

    def can_see(self, ctx: RequestContext, resource: dict[str, Any]) -> bool:
        return True

    def search_restriction(self, ctx: RequestContext, resource_type: str) -> list[str] | None:
        return None
