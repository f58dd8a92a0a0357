"""The sans-I/O core shared by both clients: an operation is a generator that yields `Call`s (HTTP
requests to make) and receives `Reply`s, so every FHIR interaction is written once and run either by
the synchronous or the asynchronous driver; plus the pure rules both drivers apply to each call."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from fhirvault import jsoncodec
from fhirvault.client.transfer import DownloadSink, UploadBody

T = TypeVar("T")

Operation = Generator["Call", "Reply", T]
"""An interaction: yields the calls to make, receives their replies, returns the result."""

MAX_REDIRECTS = 5
FHIR_JSON = "application/fhir+json"


@dataclass
class Call:
    """One HTTP request an operation wants made."""

    method: str
    url: str
    params: Sequence[tuple[str, str]] = ()
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] | None = None
    upload: UploadBody | None = None
    download: DownloadSink | None = None
    # Whether the bearer token goes along; even then only to URLs under the FHIR base (see carries_token).
    authenticated: bool = True
    # Seconds to wait for the answer, when the call may take longer than the client's timeout (the
    # server reading back a large upload); None: the client's own.
    timeout: float | None = None

    def full_url(self) -> str:
        """The URL with the query parameters appended, as it will be requested."""
        return str(httpx.URL(self.url, params=list(self.params))) if self.params else self.url

    @property
    def replayable(self) -> bool:
        """Whether the request can be sent again (a streamed upload cannot)."""
        return self.upload is None


@dataclass
class Reply:
    """A successful (2xx) response: status, headers, and the JSON body (None when empty or streamed)."""

    status: int
    headers: Mapping[str, str]
    body: Any


def carries_token(fhir_base: str, call: Call, url: str) -> bool:
    """The token goes only to the FHIR server's own API: never to another host, nor to signed storage
    URLs (which need none), nor after a redirect leaves the FHIR base."""
    return call.authenticated and (url == fhir_base or url.startswith(fhir_base + "/"))


def redirect_target(call: Call, status: int, headers: Mapping[str, str], url: str) -> str | None:
    """Where to go next when a GET/HEAD without body is redirected (e.g. storage to an object store)."""
    location = headers.get("location")
    if status in (301, 302, 303, 307, 308) and location and call.method in ("GET", "HEAD") and call.replayable:
        return str(httpx.URL(url).join(location))
    return None


def parse_body(content: bytes) -> Any:
    """A reply body as JSON, or None when it is empty or not JSON (e.g. raw bytes or an HTML error page)."""
    if not content.strip():
        return None
    try:
        return jsoncodec.loads_exact(content)
    except ValueError:
        return None


def json_content(call: Call) -> bytes | None:
    """The JSON body of `call` as bytes (None without one): written by the server's own codec, so that
    decimals read from the server go back with the precision they came with (R4 datatypes.html#decimal)."""
    return None if call.json is None else jsoncodec.dumps(call.json)


def request_headers(call: Call, token: str | None) -> dict[str, str]:
    """The headers to send for `call`: its own, Content-Length for an upload of known size (instead of
    chunked), and the bearer token when given."""
    headers = dict(call.headers)
    if call.json is not None and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/fhir+json"
    if call.upload is not None and call.upload.total is not None:
        # A known length goes up as Content-Length rather than chunked encoding.
        headers["Content-Length"] = str(call.upload.total)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers
