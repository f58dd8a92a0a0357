"""CORS for the FHIR API and the token endpoint (CORS_ORIGINS), so that browser apps on another origin can
use the server: preflights are answered before authentication (a browser sends them without a token), and
answers carry Access-Control-Allow-Origin and expose the headers a FHIR client reads (Location, ETag, ...).

Starlette's CORSMiddleware does the work; this module only scopes it. The tus upload route and the signed
`/storage/` URLs keep their own CORS (UPLOAD_CORS_ORIGIN, STORAGE_CORS_ORIGIN).
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirvault.http.auth import FHIR_PREFIX, SMART_CONFIGURATION, UPLOAD_PATH

# What a FHIR client reads from answers besides the CORS-safelisted headers.
EXPOSED = ["Location", "Content-Location", "ETag", "Last-Modified", "Link", "Content-Range", "Accept-Ranges",
           "Content-Disposition", "X-Security-Context", "Retry-After", "WWW-Authenticate", "Upload-Offset"]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def parse_origins(setting: str) -> list[str]:
    """The origins of a CORS_ORIGINS setting: comma-separated (`https://app.example.org`), `*` for any;
    [] for none."""
    return [o.strip().rstrip("/") for o in setting.split(",") if o.strip()]


def _in_scope(path: str) -> bool:
    if path.startswith(FHIR_PREFIX + UPLOAD_PATH):
        return False  # tus: UPLOAD_CORS_ORIGIN
    return path == FHIR_PREFIX or path.startswith(FHIR_PREFIX + "/") or path in ("/oauth2/token", SMART_CONFIGURATION)


class ApiCors:
    """ASGI middleware: CORS (Starlette's CORSMiddleware with `origins`) on the FHIR API, the token endpoint
    and SMART discovery; other paths pass through untouched."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        # allow_private_network: Chromium asks a server on a private network or loopback (a hospital's
        # intranet) whether a page may reach it (Private Network Access); an origin listed is one that may.
        # Credentials (MedplumClient fetches with `credentials: 'include'`) only for origins named one by one:
        # the answer then names the origin and allows credentials; with `*` browsers refuse credentialed
        # requests, and a wildcard that allowed them would let any site send a browser's stored credentials.
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=METHODS, allow_headers=["*"],
                                   expose_headers=EXPOSED, max_age=600, allow_private_network=True,
                                   allow_credentials="*" not in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hands requests in scope to CORSMiddleware, the rest to the app."""
        if scope["type"] == "http" and _in_scope(scope["path"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
