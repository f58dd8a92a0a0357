"""The exceptions the client raises for FHIR error responses, built from their OperationOutcome."""

from __future__ import annotations

import json
from typing import Any


class FhirError(Exception):
    """A FHIR server answered with an error: `status` is the HTTP status, `outcome` the
    OperationOutcome it sent (or one made up from the body when it sent none); the message is the
    outcome's diagnostics."""

    def __init__(self, status: int, outcome: dict[str, Any]) -> None:
        self.status = status
        self.outcome = outcome
        super().__init__(outcome_message(outcome) or f"HTTP {status}")


class InvalidError(FhirError):
    """400 Bad Request or 422 Unprocessable Entity."""


class UnauthorizedError(FhirError):
    """401: no token, or the token was refused."""


class ForbiddenError(FhirError):
    """403: authenticated, but not allowed."""


class NotFoundError(FhirError):
    """404: no such resource (or not visible to this client)."""


class ConflictError(FhirError):
    """409 Conflict."""


class GoneError(FhirError):
    """410: the resource was deleted (or a signed URL expired)."""


class PreconditionFailedError(FhirError):
    """412: `If-Match` named a version that is no longer the current one."""


class IntegrityError(FhirError):
    """Downloaded bytes do not match the Attachment's `size` or `hash` (status 0: no HTTP error)."""


_BY_STATUS: dict[int, type[FhirError]] = {
    400: InvalidError, 422: InvalidError, 401: UnauthorizedError, 403: ForbiddenError,
    404: NotFoundError, 409: ConflictError, 410: GoneError, 412: PreconditionFailedError,
}


def outcome_message(outcome: dict[str, Any]) -> str:
    """The diagnostics (or details text) of the outcome's issues, joined."""
    parts: list[str] = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if text:
            parts.append(str(text))
    return "; ".join(parts)


def simple_outcome(message: str, code: str = "processing") -> dict[str, Any]:
    """An OperationOutcome with one error issue, for failures the client finds itself (no server answer to
    quote)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}]}


def error_for(status: int, body: bytes, content_type: str = "") -> FhirError:
    """The exception for an error response: its OperationOutcome when the body is one; otherwise an
    outcome carrying the body's text (OAuth2 errors are `{"error": ..., "error_description": ...}`)."""
    outcome: dict[str, Any] | None = None
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict) and parsed.get("resourceType") == "OperationOutcome":
        outcome = parsed
    elif isinstance(parsed, dict) and "error" in parsed:
        text = str(parsed.get("error_description") or parsed["error"])
        outcome = simple_outcome(text, "security" if status in (401, 403) else "processing")
    else:
        text = body[:500].decode("utf-8", "replace").strip() if body and "html" not in content_type else ""
        outcome = simple_outcome(text or f"HTTP {status}")
    return _BY_STATUS.get(status, FhirError)(status, outcome)
