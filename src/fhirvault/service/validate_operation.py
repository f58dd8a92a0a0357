"""The `$validate` operation (R4 operation-resource-validate) on a type or an instance."""

from __future__ import annotations

from typing import Any

from fhirvault.errors import Invalid
from fhirvault.fhir.validation import Issue, validate_resource
from fhirvault.service.context import RequestContext
from fhirvault.service.resources import ResourceService
from fhirvault.service.validation import outcome_of

VALIDATE_MODES = ("create", "update", "delete")


class ValidateOperation:
    """`$validate` (R4 operation-resource-validate) on a type or an instance.

    Answers an OperationOutcome: the issues `validate_resource` finds, plus, by `mode`, what the
    interaction itself would refuse (an update whose id differs from the URL's, a delete of a
    resource that is not there). Profiles other than the base definitions are not validated; a
    `profile` asked for gets a warning issue saying so.
    """

    def __init__(self, resources: ResourceService) -> None:
        self.resources = resources

    async def run(self, ctx: RequestContext, rtype: str, rid: str | None, resource: Any, mode: str | None,
                  profile: str | None) -> dict[str, Any]:
        """`resource` is the parsed body (None for none); raises Invalid for a `mode` R4 does not define."""
        if mode is not None and mode not in VALIDATE_MODES:
            raise Invalid(f"mode '{mode}' is not one of {', '.join(VALIDATE_MODES)}", expression="mode")
        self.resources.access.require(ctx, mode or "read", rtype)
        issues: list[Issue] = []
        if profile:
            issues.append(Issue("warning", "not-supported", "profile",
                                f"Validation against profile '{profile}' is not supported; the resource was "
                                "validated against the base R4 definitions only"))
        if mode == "delete":
            if rid is None:
                raise Invalid("mode=delete needs an instance: POST [type]/[id]/$validate?mode=delete")
            await self.resources.read(ctx, rtype, rid)  # NotFound / Gone as a delete would see it
            return outcome_of(issues)
        if not isinstance(resource, dict):
            if rid is None:
                raise Invalid("$validate needs the resource to check: the body, or a Parameters body with "
                              "a 'resource' parameter")
            stored = await self.resources.read(ctx, rtype, rid)
            resource = stored.content
        assert isinstance(resource, dict)
        if resource.get("resourceType") != rtype:
            issues.append(Issue("error", "invalid", "resourceType",
                                f"The resource's type {resource.get('resourceType')!r} is not the URL's '{rtype}'"))
        if mode == "update" and rid is not None and resource.get("id") != rid:
            issues.append(Issue("error", "invalid", f"{rtype}.id",
                                f"An update of {rtype}/{rid} must carry id '{rid}' in the body"))
        issues.extend(validate_resource(resource))
        return outcome_of(issues)


def validate_arguments(body: Any, query: dict[str, str]) -> tuple[Any, str | None, str | None]:
    """(resource, mode, profile) of a `$validate` request: from a Parameters body (parameters
    `resource`, `mode`, `profile`), else the body is the resource; the query may give mode/profile."""
    mode, profile = query.get("mode"), query.get("profile")
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        resource = None
        for p in body.get("parameter") or []:
            if not isinstance(p, dict):
                continue
            if p.get("name") == "resource":
                resource = p.get("resource")
            elif p.get("name") == "mode":
                mode = p.get("valueCode") or p.get("valueString")
            elif p.get("name") == "profile":
                profile = p.get("valueUri") or p.get("valueCanonical")
        return resource, mode, profile
    return body, mode, profile
