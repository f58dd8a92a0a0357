"""The typed way from a request to the server's services (`app.state.vault`, set by `fhirvault.app`)."""

from __future__ import annotations

from starlette.requests import Request

from fhirvault.service.services import Services


def vault(request: Request) -> Services:
    """The services of the server process handling `request`."""
    services: Services = request.app.state.vault
    return services
