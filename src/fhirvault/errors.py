"""Domain exceptions shared by every layer; the HTTP edge maps each to a status and an OperationOutcome."""

from __future__ import annotations

from typing import Any


class FhirVaultError(Exception):
    """Base class: a message a user can act on, an HTTP status and an OperationOutcome issue code."""

    status = 500
    code = "exception"

    def __init__(self, message: str, *, code: str | None = None, expression: str | None = None,
                 issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.expression = expression
        # Several OperationOutcome issues (e.g. every validation error), each an `issue` element;
        # when given they are the response's issues, `message` summing them up.
        self.issues = issues


class Invalid(FhirVaultError):
    """The request or resource breaks a FHIR or HTTP rule (a malformed body, an unknown parameter, an
    R4 validation error): 400, issue code `invalid` (or the more precise code given)."""

    status = 400
    code = "invalid"


class Unauthorized(FhirVaultError):
    """No valid bearer token (missing, expired, revoked, wrong signature): 401 with `WWW-Authenticate`.
    The message never repeats the token."""

    status = 401
    code = "login"


class Forbidden(FhirVaultError):
    """The caller is known but its scopes, patient context or a `Binary.securityContext` do not allow
    the interaction: 403, issue code `forbidden`."""

    status = 403
    code = "forbidden"


class NotFound(FhirVaultError):
    """No such resource, version, route or job for this caller (also what a caller gets for a resource
    its access rules hide, so hiding leaks nothing): 404."""

    status = 404
    code = "not-found"


class Conflict(FhirVaultError):
    """The request disagrees with the current state (an id in the body that is not the URL's, a version
    that changed meanwhile, several matches for a conditional interaction where the spec says 409): 409."""

    status = 409
    code = "conflict"


class Gone(FhirVaultError):
    """The resource existed and was deleted (FHIR R4 RESTful API, read of a deleted resource): 410."""

    status = 410
    code = "deleted"


class Locked(FhirVaultError):
    """The resource exists but may not be served yet (e.g. content waiting for its malware scan; RFC 4918 423)."""

    status = 423
    code = "transient"


class PreconditionFailed(FhirVaultError):
    """An HTTP precondition (`If-Match`, `If-None-Match`) or a conditional interaction's criteria did not
    hold (R4 3.1.0.8, several matches on conditional update or create): 412."""

    status = 412
    code = "conflict"


class Unprocessable(FhirVaultError):
    """Well formed but cannot be carried out on the current state, e.g. a PATCH whose `test` fails (RFC 5789)."""

    status = 422
    code = "processing"


class NotAcceptable(FhirVaultError):
    """No representation the server can give matches what the request asked for (`_format`, Accept)."""

    status = 406
    code = "not-supported"


class TooLarge(FhirVaultError):
    """A body, a decoded body or a Bundle larger than the configured limit (bytes): 413."""

    status = 413
    code = "too-costly"


class Unsupported(FhirVaultError):
    """A request body in a media type, charset or content coding the endpoint does not take: 415."""

    status = 415
    code = "not-supported"


class Unimplemented(FhirVaultError):
    """The server, as configured, does not offer what was asked for (e.g. an operation of another storage
    mode); HTTP 501, not a client mistake to be fixed by other input."""

    status = 501
    code = "not-supported"


class StorageFailure(FhirVaultError):
    """The bytes could not be stored or read back; never the client's fault. Answered 503 with
    `Retry-After`: the usual cause is a blob store that is away for a while."""

    status = 503
    code = "transient"
    headers = {"Retry-After": "5"}


class Unavailable(FhirVaultError):
    """A part the server depends on (the database, the blob store) does not answer right now; the
    request changed nothing and may be retried after `retry_after` seconds (sent as `Retry-After`)."""

    status = 503
    code = "transient"

    def __init__(self, message: str, *, part: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.part = part
        self.headers = {"Retry-After": str(retry_after)}


class InsufficientStorage(FhirVaultError):
    """The blob store has no room left for the bytes (RFC 4918 507); nothing of them was kept."""

    status = 507
    code = "transient"


class ChecksumMismatch(FhirVaultError):
    """The bytes of a resumable upload's PATCH do not have the checksum the client sent (tus 1.0
    Checksum extension: 460 Checksum Mismatch); none of them was kept."""

    status = 460
    code = "invalid"
