"""The Python client's tokens: discovery of the token URL, renewal before expiry, one renewal on a
401, fixed tokens, and 401 errors. A stand-in token server until the server has OAuth2."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fhirvault.client import ClientCredentials, UnauthorizedError
from tests.support.clients import open_client
from tests.support.standin import StandIn, StandInServer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandInServer(require_token=True, expires_in=60) as state:
        state.resources["Patient/p1"] = {"resourceType": "Patient", "id": "p1"}
        yield state


def bearer_tokens(standin: StandIn) -> list[str]:
    return [r.headers.get("authorization", "") for r in standin.requests_to("/fhir/R4/Patient")]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_token_is_discovered_fetched_once_and_renewed_before_expiry(standin: StandIn, flavour: str) -> None:
    clock = FakeClock()
    creds = ClientCredentials(standin.client_id, standin.client_secret, clock=clock)
    with open_client(flavour, standin.base, credentials=creds) as fhir:
        fhir.read_resource("Patient", "p1")
        fhir.read_resource("Patient", "p1")
        clock.now += 50          # 10 s before expiry: still good
        fhir.read_resource("Patient", "p1")
        clock.now += 5           # within the renewal margin (6 s for a 60 s token)
        fhir.read_resource("Patient", "p1")
    assert bearer_tokens(standin) == ["Bearer token-1"] * 3 + ["Bearer token-2"]
    assert len(standin.requests_to("/fhir/R4/.well-known/smart-configuration")) == 1
    assert creds.token_url == f"{standin.url}/oauth2/token" and creds.fetch_count == 2
    token_posts = standin.requests_to("/oauth2/token")
    assert all(r.headers["authorization"].startswith("Basic ") for r in token_posts)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_refused_token_is_renewed_once_and_the_request_retried(standin: StandIn, flavour: str) -> None:
    with open_client(flavour, standin.base, client_id=standin.client_id, client_secret=standin.client_secret,
                     token_url=f"{standin.url}/oauth2/token") as fhir:
        fhir.read_resource("Patient", "p1")
        standin.revoked.add("token-1")     # e.g. the server's signing key rotated
        assert fhir.read_resource("Patient", "p1")["id"] == "p1"
    assert bearer_tokens(standin) == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]
    assert not standin.requests_to("/fhir/R4/.well-known")   # token_url given: no discovery


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_401_raises_unauthorized_with_outcome_text(standin: StandIn, flavour: str) -> None:
    with open_client(flavour, standin.base, token="made-up") as fhir, pytest.raises(UnauthorizedError) as err:
        fhir.read_resource("Patient", "p1")
    assert err.value.status == 401 and "bearer token is missing, expired or unknown" in str(err.value)
    assert bearer_tokens(standin) == ["Bearer made-up"]   # a fixed token is not retried
    with open_client(flavour, standin.base) as anonymous, pytest.raises(UnauthorizedError):
        anonymous.read_resource("Patient", "p1")
    assert bearer_tokens(standin)[-1] == ""


def test_wrong_client_secret_raises_unauthorized_from_token_endpoint(standin: StandIn) -> None:
    with open_client("sync", standin.base, client_id=standin.client_id, client_secret="wrong") as fhir:
        with pytest.raises(UnauthorizedError, match="invalid_client"):
            fhir.read_resource("Patient", "p1")
        assert not standin.requests_to("/fhir/R4/Patient")


def test_constructor_rejects_half_or_mixed_credentials() -> None:
    with pytest.raises(ValueError, match="both"):
        open_client("sync", "http://127.0.0.1:9/fhir/R4", client_id="x").__enter__()
    with pytest.raises(ValueError, match="either"):
        open_client("sync", "http://127.0.0.1:9/fhir/R4", client_id="x", client_secret="y",
                    token="t").__enter__()
