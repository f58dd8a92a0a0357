"""OperationOutcome resources."""

from __future__ import annotations

from typing import Any


def operation_outcome(
    message: str, *, code: str = "processing", severity: str = "error", expression: str | None = None
) -> dict[str, Any]:
    """An OperationOutcome (R4) with one issue: `message` as diagnostics and details.text, the issue `code`
    and `severity`, and the FHIRPath `expression` of the element concerned when given."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": message}
    issue["details"] = {"text": message}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def informational(messages: list[str]) -> dict[str, Any]:
    """An OperationOutcome of informational issues, one per message (e.g. the outcome of a successful delete)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational", "diagnostics": m} for m in messages],
    }


def warnings(messages: list[str], code: str = "not-supported") -> dict[str, Any]:
    """An OperationOutcome of warnings, e.g. search parameters that were ignored."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": code, "diagnostics": m} for m in messages],
    }
