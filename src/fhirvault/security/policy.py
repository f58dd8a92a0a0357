"""The access policy: SMART scopes per interaction, patient compartments, and Binary.securityContext."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from fhirvault.errors import Forbidden
from fhirvault.fhir.indexing import COMPARTMENT, RefEntry, index_entries
from fhirvault.fhir.references import parse_reference
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
        rtype = resource.get("resourceType")
        letter = letter_of(interaction)
        if not isinstance(rtype, str) or not p.scopes.allows(letter, rtype):
            return False
        if rtype == "Binary":
            return await self._binary_allowed(ctx, conn, p, resource, letter)
        if p.patient is None:
            return True
        _, refs = index_entries(resource, ctx.base_url)
        compartments = {r.target for r in refs if r.param == COMPARTMENT}
        if letter in CHANGING:
            # A patient-context change must leave the resource in the caller's compartment only: every
            # reference of the R4 patient CompartmentDefinition's params names the caller or is absent.
            return compartments == {p.patient}
        return p.patient in compartments

    async def _binary_allowed(self, ctx: CallerContext, conn: AsyncConnection, p: Principal,
                              binary: dict[str, Any], letter: str) -> bool:
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
        written_at = _last_updated_us(binary) if reading else None
        if written_at is not None:
            # A Binary stays bound to the securityContext resource as it was when the Binary was written:
            # when that resource was deleted since, the last version before the deletion decides, and
            # whoever re-creates the id later gains nothing.
            deletion = await self.store.first_deletion_after(conn, ref.resource_type, ref.id, written_at)
            if deletion is not None:
                before = await self.store.get_version(conn, ref.resource_type, ref.id, deletion - 1)
                return before is not None and before.content is not None \
                    and self.in_patient_compartment(ctx, before.content, p.patient)
        return await self.store.in_compartment(conn, ref.resource_type, ref.id, p.patient)

    @staticmethod
    def in_patient_compartment(ctx: CallerContext, resource: dict[str, Any], patient: str) -> bool:
        """Whether `resource` is in the R4 patient compartment of `patient` ("Patient/id"), by the compartment
        definition's reference parameters."""
        _, refs = index_entries(resource, ctx.base_url)
        return RefEntry(COMPARTMENT, patient) in refs

    def search_restriction(self, ctx: CallerContext, resource_type: str) -> list[str] | None:
        """The patient references a search of `resource_type` must stay inside (a one-element list for a
        patient-context client), or None when unrestricted."""
        p = _principal(ctx)
        return [p.patient] if p is not None and p.patient else None

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

