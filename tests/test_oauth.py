"""The token endpoint, scopes narrowing, rate limiting, key rotation and the clients command line."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from urllib.parse import quote_plus

import httpx
import pytest

from tests.security_support import bearer, token_parts
from tests.support.server import ServerProcess


def _token_request(server: ServerProcess, data: dict[str, str], auth: tuple[str, str] | None = None
                   ) -> httpx.Response:
    headers = {}
    if auth:
        raw = f"{quote_plus(auth[0])}:{quote_plus(auth[1])}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    return httpx.post(f"{server.url}/oauth2/token", data=data, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def sqlite_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory("sqlite")


def test_basic_and_post_authentication_issue_rfc9068_tokens(sqlite_server: ServerProcess) -> None:
    s = sqlite_server
    c = s.create_client("svc", "system/*.rs")
    for r in (_token_request(s, {"grant_type": "client_credentials"}, (c["client_id"], c["client_secret"])),
              _token_request(s, {"grant_type": "client_credentials", "client_id": c["client_id"],
                                 "client_secret": c["client_secret"]})):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["scope"] == "system/*.rs"
        assert r.headers["Cache-Control"] == "no-store"
        header, claims = token_parts(body["access_token"])
        assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
        assert claims["iss"] == s.url and claims["aud"] == s.base
        assert claims["sub"] == claims["client_id"] == c["client_id"]
        assert claims["exp"] - claims["iat"] == 3600 and claims["jti"] and claims["scope"] == "system/*.rs"
        got = httpx.get(f"{s.base}/Patient", headers=bearer(body["access_token"]))
        assert got.status_code == 200


@pytest.mark.parametrize("data, auth, status, error", [
    ({"grant_type": "client_credentials"}, ("CID", "wrong"), 401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "CID", "client_secret": "wrong"}, None, 401,
     "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}, None, 401,
     "invalid_client"),
    ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
    ({"grant_type": "password", "username": "u", "password": "p"}, ("CID", "SECRET"), 400,
     "unsupported_grant_type"),
    ({}, ("CID", "SECRET"), 400, "invalid_request"),
    ({"grant_type": "client_credentials", "client_secret": "SECRET"}, ("CID", "SECRET"), 400, "invalid_request"),
    ({"grant_type": "client_credentials", "scope": "system/*.cruds"}, ("CID", "SECRET"), 400, "invalid_scope"),
    ({"grant_type": "client_credentials", "scope": "system/Patient.rw"}, ("CID", "SECRET"), 400,
     "invalid_scope"),
    ({"grant_type": "client_credentials", "scope": "openid"}, ("CID", "SECRET"), 400, "invalid_scope"),
])
def test_token_errors_follow_rfc6749(sqlite_server: ServerProcess, data: dict[str, str],
                                     auth: tuple[str, str] | None, status: int, error: str) -> None:
    c = sqlite_server.create_client("errs", "system/*.rs")
    fill = {"CID": c["client_id"], "SECRET": c["client_secret"]}
    data = {k: fill.get(v, v) for k, v in data.items()}
    auth = (fill.get(auth[0], auth[0]), fill.get(auth[1], auth[1])) if auth else None
    r = _token_request(sqlite_server, data, auth)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error and r.json()["error_description"]
    assert c["client_secret"] not in r.text
    if status == 401 and auth:
        assert r.headers["WWW-Authenticate"].startswith("Basic")


def test_scope_narrowing(sqlite_server: ServerProcess) -> None:
    s = sqlite_server
    c = s.create_client("narrow", "system/*.rs")
    token = s.token(c["client_id"], c["client_secret"], scope="system/Patient.read")
    _, claims = token_parts(token)
    assert claims["scope"] == "system/Patient.read"
    assert httpx.get(f"{s.base}/Patient", headers=bearer(token)).status_code == 200
    r = httpx.get(f"{s.base}/Observation", headers=bearer(token))
    assert r.status_code == 403 and "system/Observation.s" in r.json()["issue"][0]["diagnostics"]


def test_disabled_client_gets_no_token_and_rotated_secret_replaces_the_old(sqlite_server: ServerProcess) -> None:
    s = sqlite_server
    c = s.create_client("rot", "system/*.rs")
    done = s.cli("clients", "rotate-secret", c["client_id"], "--json")
    assert done.returncode == 0, done.stderr
    new_secret = json.loads(done.stdout)["client_secret"]
    assert _token_request(s, {"grant_type": "client_credentials"}, (c["client_id"], c["client_secret"])
                          ).status_code == 401
    assert _token_request(s, {"grant_type": "client_credentials"}, (c["client_id"], new_secret)).status_code == 200
    assert s.cli("clients", "disable", c["client_id"]).returncode == 0
    r = _token_request(s, {"grant_type": "client_credentials"}, (c["client_id"], new_secret))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    listing = s.cli("clients", "list", "--json")
    clients = {x["client_id"]: x for x in json.loads(listing.stdout)}
    assert clients[c["client_id"]]["enabled"] is False
    assert new_secret not in listing.stdout and "secret" not in listing.stdout
    assert s.cli("clients", "disable", "no-such-client").returncode != 0


def test_client_creation_rejects_bad_scopes(sqlite_server: ServerProcess) -> None:
    for args in (["--scope", "system/Patient.rx"], ["--scope", "patient/*.rs"],
                 ["--scope", "system/*.rs", "--patient", "Patient/1"], ["--scope", "user/*.rs"],
                 ["--scope", "system/Nonsense.rs"]):
        done = sqlite_server.cli("clients", "create", "--name", "bad", *args)
        assert done.returncode != 0 and "scope" in done.stderr.lower()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_failed_authentications_are_rate_limited_per_client(
        server_factory: Callable[..., ServerProcess], backend: str) -> None:
    s = server_factory(backend, auth_failure_limit=3, auth_failure_window=3600)
    victim = s.create_client("victim", "system/*.rs")
    other = s.create_client("other", "system/*.rs")
    for _ in range(3):
        r = _token_request(s, {"grant_type": "client_credentials"}, (victim["client_id"], "guess"))
        assert r.status_code == 401
    # Now even the right secret is refused, for this client id only.
    r = _token_request(s, {"grant_type": "client_credentials"}, (victim["client_id"], victim["client_secret"]))
    assert r.status_code == 429 and r.json()["error"] == "invalid_client"
    assert int(r.headers["Retry-After"]) > 0
    r = _token_request(s, {"grant_type": "client_credentials"}, (other["client_id"], other["client_secret"]))
    assert r.status_code == 200
    # The count lives in the database: a restarted server still refuses.
    s.stop()
    s.start()
    r = _token_request(s, {"grant_type": "client_credentials"}, (victim["client_id"], victim["client_secret"]))
    assert r.status_code == 429


def test_key_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(sqlite_server: ServerProcess) -> None:
    s = sqlite_server
    c = s.create_client("keys", "system/*.rs")
    old = s.token(c["client_id"], c["client_secret"])
    done = s.cli("keys", "rotate")
    assert done.returncode == 0, done.stderr
    new = s.token(c["client_id"], c["client_secret"])
    assert token_parts(old)[0]["kid"] != token_parts(new)[0]["kid"]
    for token in (old, new):
        assert httpx.get(f"{s.base}/Patient", headers=bearer(token)).status_code == 200


def test_admin_client_file_and_no_secrets_in_the_log(sqlite_server: ServerProcess) -> None:
    s = sqlite_server
    path = s.data_dir / "admin-client.json"
    assert path.stat().st_mode & 0o777 == 0o600
    creds = json.loads(path.read_text())
    token = s.auth_headers()["Authorization"].split(" ", 1)[1]
    assert httpx.get(f"{s.base}/Patient", headers=bearer(token + "x")).status_code == 401
    _token_request(s, {"grant_type": "client_credentials"}, (creds["client_id"], "wrong-secret"))
    deadline = time.monotonic() + 5  # let the log reach the file
    while time.monotonic() < deadline and "POST /oauth2/token" not in s.log():
        time.sleep(0.05)
    log = s.log_path.read_text()
    # The first start prints the secret once on stdout (which the test harness sends to this file),
    # so look only at what came after the server started answering.
    marker = "Application startup complete"
    assert marker in log, log
    served = log[log.index(marker):]
    for secret in (token, creds["client_secret"], "wrong-secret"):
        assert secret not in served
