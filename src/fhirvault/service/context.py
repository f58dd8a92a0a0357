"""The request context every use case receives: who is calling, and our public base URL."""

from __future__ import annotations

from dataclasses import dataclass

from fhirvault.security.principal import Caller


@dataclass
class RequestContext:
    """`base_url` is the FHIR base (e.g. https://host/fhir/R4); `principal` the caller, a `SystemPrincipal`
    for work on the server's own authority; `handling_strict` is `Prefer: handling=strict` (FHIR R4
    http.html#prefer): unknown search parameters are an error instead of being ignored; `scan_override`
    whether the request asked to be served content the malware scan policy holds back."""

    base_url: str
    principal: Caller
    handling_strict: bool = False
    # The request asked, with `X-Scan-Override: true`, for content the scan policy would refuse; honoured
    # only for administrative clients (service/scans.py).
    scan_override: bool = False
    # `Prefer: return=` of the request (minimal | representation | operationoutcome; None: not given), which a
    # batch or transaction applies to each write entry's response (R4 http.html#prefer)
    prefer_return: str | None = None
