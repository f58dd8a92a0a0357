"""The resource pipelines: the steps every written resource passes before it is stored and after its
transaction commits, and the steps every stored resource passes on its way out, each in a fixed order.

`ResourceService` runs them (its `_write` and `render`); `fhirvault.app` fills the slots. To add a step,
add a slot to the pipeline and put it in the order in `write_steps` / `read_steps`: the order is
stated here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault import jsoncodec
from fhirvault.service.context import RequestContext
from fhirvault.store.resources import StoredResource

log = logging.getLogger("fhirvault")


Finish = Callable[[], Awaitable[None]]


@dataclass
class UnitOfWork:
    """One write transaction (`conn`), the resources it wrote (for the after-commit steps), the undo
    actions for work done outside the database (bytes put in a blob store), awaited if it rolls back, and
    `on_commit` actions (plain calls, e.g. starting a background removal), run once it has committed.

    A transaction Bundle writes its entries one after another, yet R4 says their order does not matter
    (http.html#trules). `upcoming` holds the references (`Binary/123`) the unit is still going to write;
    a write step that needs one of them (an Attachment naming a Binary created by a later entry) hands
    its remaining work to `defer`, which runs once every write is done, before the commit."""

    conn: AsyncConnection
    committed: list[dict[str, Any]] = field(default_factory=list)
    on_rollback: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    upcoming: set[str] = field(default_factory=set)
    written: list[StoredResource] = field(default_factory=list)
    deferred: list[tuple[dict[str, Any], Finish]] = field(default_factory=list)
    # "Type/id" -> the current content an update in this unit replaces (what the write steps may compare
    # the new content with: an element kept as it was is not judged again by rules it met when written)
    replacing: dict[str, dict[str, Any]] = field(default_factory=dict)

    def defer(self, resource: dict[str, Any], finish: Finish) -> None:
        """Run `finish` (which may change `resource` in place, or raise a domain error to refuse the whole
        unit) after the unit's last write; the version of `resource` just written is then stored again."""
        self.deferred.append((resource, finish))

    async def rolled_back(self) -> None:
        """Run every undo action, newest first; one that fails is logged, the others still run.
        Shielded: a request cancelled while this runs does not leave bytes behind."""
        actions, self.on_rollback = self.on_rollback[::-1], []
        for action in actions:
            try:
                await asyncio.shield(action())
            except Exception:
                log.warning("an undo action of a rolled back write failed", exc_info=True)


class WriteStep(Protocol):
    """Runs inside the write transaction, before the version is stored; may change `resource` in place
    (never its id or meta) and may raise a domain error to refuse the write (nothing is stored)."""

    async def before_write(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        """Checks or rewrites `resource` inside the write transaction `uow.conn`; raises a domain error to
        refuse."""


class BeforeCommitStep(Protocol):
    """Runs once per write transaction, after its last write and deferred work, before it commits: sees every
    version the unit stored (`uow.written`, blobs committed) and may write rows of its own in `uow.conn`."""

    async def before_commit(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """Sees the unit's written versions and may write its own rows before the commit."""


class AfterCommitStep(Protocol):
    """Runs after a write transaction committed, once per resource written (e.g. to schedule jobs)."""

    async def after_commit(self, ctx: RequestContext, resource: dict[str, Any]) -> None:
        """Acts on one committed resource (its stored form)."""


class ReadStep(Protocol):
    """Rewrites copies of stored resources on their way out (never the stored rows). `conn`, when given, is
    the open connection the resources were read on (a search page's), for the step's own look-ups; `texts`,
    when given, are the JSON texts the copies were parsed from."""

    async def after_read(self, ctx: RequestContext, resources: list[dict[str, Any]],
                         conn: AsyncConnection | None = None, texts: list[bytes] | None = None) -> None:
        """Rewrites `resources` (copies) in place before they are answered."""


class TextReadStep(Protocol):
    """A read step that works on the JSON texts of stored resources, before they are parsed into the copies
    that are answered: a change of a few strings costs no walk over the resources."""

    async def rewrite_texts(self, ctx: RequestContext, resources: list[dict[str, Any]], texts: list[bytes],
                            conn: AsyncConnection | None = None) -> list[bytes]:
        """The texts (`jsoncodec.dumps_stored` of `resources`, in order) as they are to be answered."""


@dataclass
class WritePipeline:
    """The write steps, by slot; an empty slot is skipped (e.g. no blob store: nothing moves out)."""

    # The resource must be valid R4 (VALIDATION_ENABLED); first, so that no later step works on, or
    # stores bytes for, a resource that will be refused.
    validate: WriteStep | None = None
    # Strict base64 checked everywhere; Attachment.data above INLINE_MAX_BYTES moved into a Binary.
    move_inline_data: WriteStep | None = None
    # Our Binary URLs in Attachment.url become `Binary/{id}`; runs after the move, so the URLs it
    # left are checked and filled in like any other.
    normalize_attachment_urls: WriteStep | None = None
    # Before commit: the content of every version written (Binary content, inline Attachment data) is
    # recorded by SHA-256 and, when it has no verdict yet, queued for a malware scan (SCAN_MODE).
    record_content_scans: BeforeCommitStep | None = None
    # After commit: Attachment urls pointing outside become background ingestion jobs.
    schedule_ingestion: AfterCommitStep | None = None

    def write_steps(self) -> list[WriteStep]:
        """The steps before the version is stored, in order."""
        slots = (self.validate, self.move_inline_data, self.normalize_attachment_urls)
        return [step for step in slots if step is not None]

    def before_commit_steps(self) -> list[BeforeCommitStep]:
        """The steps run once per unit before it commits, in order."""
        return [step for step in (self.record_content_scans,) if step is not None]

    async def before_commit(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """Pass the unit through every before-commit step, in order."""
        for step in self.before_commit_steps():
            await step.before_commit(ctx, uow)

    def after_commit_steps(self) -> list[AfterCommitStep]:
        """The steps after the transaction committed, in order."""
        return [step for step in (self.schedule_ingestion,) if step is not None]

    async def before_store(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        """Pass `resource` through every write step, in order."""
        for step in self.write_steps():
            await step.before_write(ctx, uow, resource)

    async def committed(self, ctx: RequestContext, uow: UnitOfWork) -> None:
        """Pass every resource `uow` wrote through the after-commit steps, in order."""
        for resource in uow.committed:
            for step in self.after_commit_steps():
                await step.after_commit(ctx, resource)


@dataclass
class ReadPipeline:
    """The read steps, by slot, run on copies of stored resources for every read, vread, history,
    search and Bundle answer."""

    # `Binary/{id}` Attachment URLs the caller may read become short-lived signed storage URLs.
    sign_attachment_urls: TextReadStep | None = None
    # Each Binary shows the malware scan verdict on its content as an extension of Binary.meta.
    show_scan_status: ReadStep | None = None

    async def render(self, ctx: RequestContext, resources: list[dict[str, Any]],
                     conn: AsyncConnection | None = None) -> list[dict[str, Any]]:
        """Copies of `resources` (stored resources, never changed) passed through every read step, in order:
        the text steps on their JSON texts, then the others on the copies parsed from those texts (`conn`:
        see ReadStep)."""
        # A JSON round trip copies plain JSON data several times faster than deepcopy, and its text is
        # where the text steps work.
        texts = [jsoncodec.dumps_stored(r) for r in resources]
        if self.sign_attachment_urls is not None:
            texts = await self.sign_attachment_urls.rewrite_texts(ctx, resources, texts, conn)
        out = [jsoncodec.loads(t) for t in texts]
        if self.show_scan_status is not None:
            await self.show_scan_status.after_read(ctx, out, conn, texts)
        return out
