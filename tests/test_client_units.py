"""Pure rules of the Python client's shared core: where the token may go, ETags, search parameters,
error mapping and upload bodies."""

from __future__ import annotations

import io

import pytest

from fhirvault.client import ConflictError, FhirError, InvalidError, NotFoundError, UnauthorizedError
from fhirvault.client.errors import error_for
from fhirvault.client.exchange import Call, carries_token
from fhirvault.client.operations import etag_for, resolve_url, search_params
from fhirvault.client.transfer import UploadBody, guess_content_type

BASE = "https://fhir.example.org/fhir/R4"


@pytest.mark.parametrize(("url", "expected"), [
    (f"{BASE}/Patient/1", True),
    (BASE, True),
    (f"{BASE}evil/Patient/1", False),                       # a prefix of the base is not the base
    ("https://fhir.example.org/storage/b1/1?sig=x", False),  # signed storage URL on the same host
    ("https://fhir.example.org.attacker.net/fhir/R4/Patient/1", False),
    ("http://fhir.example.org/fhir/R4/Patient/1", False),   # downgraded scheme
    ("https://s3.example.org/bucket/key", False),
])
def test_token_goes_only_under_the_fhir_base(url: str, expected: bool) -> None:
    assert carries_token(BASE, Call("GET", url), url) is expected
    assert carries_token(BASE, Call("GET", url, authenticated=False), url) is False


def test_etag_forms() -> None:
    assert etag_for(3) == etag_for("3") == etag_for('"3"') == etag_for('W/"3"') == 'W/"3"'


def test_search_params_repeat_list_values() -> None:
    assert search_params({"_count": 5, "date": ["ge2020", "lt2021"]}) == [
        ("_count", "5"), ("date", "ge2020"), ("date", "lt2021")]
    assert search_params([("a", 1), ("a", 2)]) == [("a", "1"), ("a", "2")]
    assert search_params(None) == []


def test_relative_and_absolute_download_urls() -> None:
    assert resolve_url(BASE, "Binary/1") == f"{BASE}/Binary/1"
    assert resolve_url(BASE, "https://x.org/a") == "https://x.org/a"
    with pytest.raises(ValueError):
        resolve_url(BASE, "/etc/passwd")
    with pytest.raises(ValueError):
        resolve_url(BASE, "file:///etc/passwd")


def test_errors_map_status_and_keep_the_outcome() -> None:
    outcome = b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"x","diagnostics":"Bad one"}]}'
    err = error_for(422, outcome)
    assert isinstance(err, InvalidError) and err.status == 422 and str(err) == "Bad one"
    assert err.outcome["issue"][0]["code"] == "x"
    assert isinstance(error_for(404, b""), NotFoundError)
    assert isinstance(error_for(409, b"plain text conflict"), ConflictError)
    assert str(error_for(409, b"plain text conflict")) == "plain text conflict"
    assert str(error_for(401, b'{"error":"invalid_client","error_description":"unknown client"}')) == "unknown client"
    assert isinstance(error_for(401, b""), UnauthorizedError)
    assert type(error_for(500, b"<html>oops</html>", "text/html")) is FhirError
    assert str(error_for(500, b"<html>oops</html>", "text/html")) == "HTTP 500"


def test_upload_body_lengths_and_text_files() -> None:
    assert UploadBody(b"abc").total == 3
    assert UploadBody("é").total == 2                      # UTF-8, not characters
    partly_read = io.BytesIO(b"0123456789")
    partly_read.read(4)
    body = UploadBody(partly_read)
    assert body.total == 6 and b"".join(body.chunks()) == b"456789"
    assert UploadBody(iter([b"a"])).total is None
    with pytest.raises(TypeError, match="'rb'"):
        list(UploadBody(io.StringIO("text")).chunks())
    with pytest.raises(TypeError):
        UploadBody(12345)  # type: ignore[arg-type]


def test_content_type_guess() -> None:
    assert guess_content_type("a.JPG") == "image/jpeg"
    assert guess_content_type("report.pdf") == "application/pdf"
    assert guess_content_type("noext") == guess_content_type(None) == "application/octet-stream"
