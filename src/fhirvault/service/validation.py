"""The validation step of every write: a resource that is not valid R4 is refused with every issue."""

from __future__ import annotations

from typing import Any

from fhirvault.errors import Invalid
from fhirvault.fhir.validation import Issue, validate_resource
from fhirvault.service.context import RequestContext
from fhirvault.service.pipelines import UnitOfWork


def outcome_of(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome listing `issues`; one `information` issue saying so when there are none."""
    if not issues:
        return {"resourceType": "OperationOutcome",
                "issue": [{"severity": "information", "code": "informational",
                           "diagnostics": "No issues found: the resource is valid R4"}]}
    return {"resourceType": "OperationOutcome", "issue": [i.as_fhir() for i in issues]}


def require_valid(resource: dict[str, Any], within: str | None = None) -> None:
    """Raises Invalid (400, one OperationOutcome issue per problem) unless `resource` is valid R4.

    `within` is the FHIRPath of the place the resource sits in a request, e.g.
    `Bundle.entry[3].resource`: issue expressions then start there instead of at the type name.
    """
    issues = [i for i in validate_resource(resource) if i.severity == "error"]
    if issues:
        raise _invalid(issues, str(resource.get("resourceType")), within)


class R4Validation:
    """WriteStep (`WritePipeline.validate`): refuses, with `require_valid`'s Invalid, a resource that is
    not valid R4 before anything of it is stored."""

    async def before_write(self, ctx: RequestContext, uow: UnitOfWork, resource: dict[str, Any]) -> None:
        """WriteStep: raises Invalid, with one OperationOutcome issue per problem, unless `resource` is valid
        R4."""
        require_valid(resource)


def relocated(exc: Invalid, rtype: str, within: str) -> Invalid:
    """`exc` with its issue expressions moved from `rtype.…` to `within.…` (a resource inside a Bundle)."""
    if not exc.issues:
        return exc
    issues = [Issue(i["severity"], i["code"], (i.get("expression") or [""])[0], i["diagnostics"]) for i in exc.issues]
    return _invalid(issues, rtype, within)


def _invalid(issues: list[Issue], rtype: str, within: str | None) -> Invalid:
    if within:
        issues = [Issue(i.severity, i.code, within + i.expression[len(rtype):]
                        if i.expression.startswith(rtype) else i.expression, i.message) for i in issues]
    first = issues[0]
    more = f" (and {len(issues) - 1} more issue{'s' if len(issues) > 2 else ''})" if len(issues) > 1 else ""
    return Invalid(f"{first.expression}: {first.message}{more}", code=first.code, expression=first.expression,
                   issues=[i.as_fhir() for i in issues])
