"""The access policy: SMART scopes per interaction, patient compartments, and Binary.securityContext."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import Forbidden
from fhirvault.fhir.indexing import compartments
from fhirvault.fhir.references import Reference, parse_reference
from fhirvault.security.principal import CallerContext, Principal, SystemPrincipal
from fhirvault.security.scopes import INTERACTION_LETTER
from fhirvault.store.resources import ResourceStore
from fhirvault.store.search_sql import Restriction

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHANGING = frozenset("cud")  # scope letters of the interactions that change a resource


def _principal(ctx: CallerContext) -> Principal | None:
    """The client whose scopes decide, or None for the server itself (allowed everything)."""
    p = ctx.principal
    if isinstance(p, SystemPrincipal):
        return None  # the server's own work (command line, background jobs, signed URLs)
    if not isinstance(p, Principal):
        raise Forbidden("The caller is not an authenticated client")
    return p


def _last_updated_us(resource: dict[str, Any]) -> int | None:
    """meta.lastUpdated of a stored version in microseconds (the store writes it); None when absent."""
    text = (resource.get("meta") or {}).get("lastUpdated")
    if not isinstance(text, str):
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (stamp - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class ContextCheck:
    """A Binary decision that needs the database: whether `ref` (its securityContext) lies in the caller's
    compartment, as it was when the Binary was written at `written_at` (microseconds; None: as it is now)."""

    ref: Reference
    written_at: int | None


def _first_deletion_after(deletions: list[tuple[int, int]], after_us: int | None) -> int | None:
    """The version id of the first of `deletions` (version id, microseconds; oldest first) later than
    `after_us`; None when there is none or `after_us` is None."""
    if after_us is None:
        return None
    return next((version for version, at in deletions if at > after_us), None)


def letter_of(interaction: str) -> str:
    """The SMART v2 permission letter ("c", "r", "u", "d" or "s") an interaction name needs; raises ValueError
    for an interaction this server does not know."""
    try:
        return INTERACTION_LETTER[interaction]
    except KeyError:
        raise ValueError(f"unknown interaction {interaction!r}") from None


class ScopePolicy:
    """Implements fhirvault.service.access.AccessPolicy for authenticated clients.

    403 vs 404: a missing scope for the requested type is refused with 403 before anything is looked
    up, so it reveals nothing. A particular resource outside what the caller may read (another
    patient's compartment, a Binary whose securityContext the caller may not read) is answered with
    404, exactly as if it did not exist. A resource the caller may read but not change is 403."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    def require(self, ctx: CallerContext, interaction: str, resource_type: str | None) -> None:
        """Checks that the caller's scopes allow `interaction` on `resource_type` (None: the whole server)
        before anything is looked up; raises Forbidden naming the scope needed. System callers
        pass."""
        p = _principal(ctx)
        if p is None:
            return
        letter = letter_of(interaction)
        if not p.scopes.allows(letter, resource_type):
            needed = f"{p.context}/{resource_type or '*'}.{letter}"
            what = resource_type or "the whole server"
            raise Forbidden(f"The access token's scopes do not allow {interaction} of {what}; "
                            f"it needs the scope {needed}")

    async def can_see(self, ctx: CallerContext, conn: AsyncConnection, resource: dict[str, Any],
                      interaction: str = "read") -> bool:
        """Whether the caller may do `interaction` on this particular resource (a dict as stored): scopes, the
        patient compartment for patient-context clients (a change must keep the resource in the
        caller's compartment only), and for a Binary its securityContext. Runs its lookups on
        `conn`."""
        p = _principal(ctx)
        if p is None:
            return True
        decision = self._decide(ctx, p, resource, letter_of(interaction))
        if isinstance(decision, ContextCheck):
            return await self._context_allows(ctx, conn, p, decision)
        return decision

    async def can_see_each(self, ctx: CallerContext, conn: AsyncConnection, resources: list[dict[str, Any]],
                           interaction: str = "read") -> list[bool]:
        """`can_see` for each of `resources`, with the same decisions, in a few statements whatever their
        number (a page of Binaries whose securityContext must be looked up costs no query per Binary)."""
        p = _principal(ctx)
        if p is None:
            return [True] * len(resources)
        letter = letter_of(interaction)
        decisions = [self._decide(ctx, p, r, letter) for r in resources]
        checks = [d for d in decisions if isinstance(d, ContextCheck)]
        if not checks:
            return [d is True for d in decisions]
        assert p.patient is not None  # only a patient-context client's decisions need the database
        refs = sorted({(c.ref.resource_type, c.ref.id) for c in checks})
        deletions = await self.store.deletions_of(conn, refs)
        in_compartment = await self.store.in_compartment_of(conn, refs, p.patient)
        out = []
        for d in decisions:
            if not isinstance(d, ContextCheck):
                out.append(d)
                continue
            key = (d.ref.resource_type, d.ref.id)
            deletion = _first_deletion_after(deletions.get(key, []), d.written_at)
            if deletion is not None:
                out.append(await self._in_compartment_before(ctx, conn, p.patient, d, deletion))
            else:
                out.append(key in in_compartment)
        return out

    def _decide(self, ctx: CallerContext, p: Principal, resource: dict[str, Any], letter: str) -> bool | ContextCheck:
        """The decision for one resource as far as the resource and the token tell; a ContextCheck when a
        Binary's securityContext resource must be looked up."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or not p.scopes.allows(letter, rtype):
            return False
        if rtype == "Binary":
            return self._binary_rule(ctx, p, resource, letter)
        if p.patient is None:
            return True
        inside = compartments(resource, ctx.base_url)
        if letter in CHANGING:
            # A patient-context change must leave the resource in the caller's compartment only: every
            # reference of the R4 patient CompartmentDefinition's params names the caller or is absent.
            return inside == {p.patient}
        return p.patient in inside

    def _binary_rule(self, ctx: CallerContext, p: Principal, binary: dict[str, Any], letter: str
                     ) -> bool | ContextCheck:
        context = binary.get("securityContext")
        ref_text = context.get("reference") if isinstance(context, dict) else None
        ref = parse_reference(ref_text, ctx.base_url) if isinstance(ref_text, str) else None
        if ref is None:
            # No securityContext on this server: the caller's Binary scopes decide, and a
            # patient-context client has no claim on a Binary that belongs to no patient.
            return p.patient is None
        # Reading needs read rights on the referenced resource; any change needs update rights on it.
        reading = letter in ("r", "s")
        needed = "r" if reading else "u"
        if not p.scopes.allows(needed, ref.resource_type):
            return False
        if p.patient is None or ref.relative == p.patient:
            return True
        return ContextCheck(ref, _last_updated_us(binary) if reading else None)

    async def _context_allows(self, ctx: CallerContext, conn: AsyncConnection, p: Principal,
                              check: ContextCheck) -> bool:
        """Whether the securityContext resource of `check` lies in the caller's patient compartment."""
        assert p.patient is not None
        ref = check.ref
        if check.written_at is not None:
            deletion = await self.store.first_deletion_after(conn, ref.resource_type, ref.id, check.written_at)
            if deletion is not None:
                return await self._in_compartment_before(ctx, conn, p.patient, check, deletion)
        return await self.store.in_compartment(conn, ref.resource_type, ref.id, p.patient)

    async def _in_compartment_before(self, ctx: CallerContext, conn: AsyncConnection, patient: str,
                                     check: ContextCheck, deletion: int) -> bool:
        # A Binary stays bound to the securityContext resource as it was when the Binary was written:
        # when that resource was deleted since, the last version before the deletion decides, and
        # whoever re-creates the id later gains nothing.
        before = await self.store.get_version(conn, check.ref.resource_type, check.ref.id, deletion - 1)
        return before is not None and before.content is not None \
            and self.in_patient_compartment(ctx, before.content, patient)

    @staticmethod
    def in_patient_compartment(ctx: CallerContext, resource: dict[str, Any], patient: str) -> bool:
        """Whether `resource` is in the R4 patient compartment of `patient` ("Patient/id"), by the compartment
        definition's reference parameters."""
        return patient in compartments(resource, ctx.base_url)

    def search_restriction(self, ctx: CallerContext, resource_type: str) -> list[str] | None:
        """The patient references a search of `resource_type` must stay inside (a one-element list for a
        patient-context client), or None when unrestricted."""
        p = _principal(ctx)
        return [p.patient] if p is not None and p.patient else None

    def reads_every_binary(self, ctx: CallerContext) -> bool:
        """Whether the caller may read every Binary whatever its securityContext: no patient context, and a
        scope that reads every type (so read rights on any securityContext target, and on Binary)."""
        p = _principal(ctx)
        if p is None:
            return True
        return p.patient is None and any(s.resource_type == "*" and "r" in s.letters for s in p.scopes.scopes)

    def query_restriction(self, ctx: CallerContext) -> Restriction | None:
        """The rules of `can_see` for reads, as SQL conditions: the patient compartment for a
        patient-context client, and a Binary's securityContext (read rights on the type it names; in
        patient context, the patient or a resource in the patient's compartment)."""
        p = _principal(ctx)
        if p is None:
            return None
        if any(s.covers("r", None) and s.resource_type == "*" for s in p.scopes.scopes):
            context_types = None
        else:
            context_types = frozenset(s.resource_type for s in p.scopes.scopes if "r" in s.letters)
        return Restriction(compartment=p.patient, context_types=context_types,
                           binary_without_context=p.patient is None)

