"""CORS on the FHIR API and the token endpoint (CORS_ORIGINS): a browser app on another origin gets a
token, creates and reads resources and reads the headers a FHIR client needs, in headless Chromium; without
the setting the browser blocks it, as before. The tus route and signed storage URLs keep their own CORS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import ServerProcess
from tests.test_storage_browser import Page, page_server, require_tool, run_browser, wait_for

__all__ = ["page_server"]  # the fixture, used by name below

# As MedplumClient does: every fetch with `credentials: 'include'`, and its X-Medplum header; the signed URL of
# an uploaded Binary is then downloaded the same way.
APP = """
(async () => {
  try {
    const withCredentials = {credentials: 'include'};
    const token = await fetch(%(origin)s + '/oauth2/token', {...withCredentials, method: 'POST',
      headers: {'Authorization': 'Basic ' + btoa(%(id)s + ':' + %(secret)s),
                'Content-Type': 'application/x-www-form-urlencoded'},
      body: 'grant_type=client_credentials'});
    const bearer = {'Authorization': 'Bearer ' + (await token.json()).access_token, 'X-Medplum': 'extended'};
    const created = await fetch(%(base)s + '/Patient', {...withCredentials, method: 'POST',
      headers: {...bearer, 'Content-Type': 'application/fhir+json', 'Prefer': 'return=representation'},
      body: JSON.stringify({resourceType: 'Patient', name: [{family: 'Cors'}]})});
    const id = (await created.json()).id;
    const read = await fetch(%(base)s + '/Patient/' + id, {...withCredentials, headers: bearer});
    const anonymous = await fetch(%(base)s + '/Patient', withCredentials);
    const binary = await fetch(%(base)s + '/Binary', {...withCredentials, method: 'POST',
      headers: {...bearer, 'Content-Type': 'text/plain'}, body: 'cross-origin bytes'});
    const signed = (await binary.json()).url;
    const bytes = await fetch(signed, {...withCredentials, headers: bearer});
    return {created: created.status, location: created.headers.get('Location'), etag: created.headers.get('ETag'),
            read: read.status, family: (await read.json()).name[0].family, anonymous: anonymous.status,
            challenge: anonymous.headers.get('WWW-Authenticate'), download: await bytes.text()};
  } catch (e) {
    return {blocked: String(e)};
  }
})()
"""


def run_app(server: ServerProcess, page_server: tuple[str, dict[str, bytes]], tmp_path: Path) -> dict:
    chromium = require_tool("chromium")
    page_origin, pages = page_server
    creds = json.loads((server.data_dir / "admin-client.json").read_text())
    origin = server.base.removesuffix("/fhir/R4")
    script = APP % {"origin": json.dumps(origin), "base": json.dumps(server.base),
                    "id": json.dumps(creds["client_id"]), "secret": json.dumps(creds["client_secret"])}
    pages["/app.html"] = b"<!doctype html><title>app</title>"

    def work(page: Page) -> Any:
        # until the page has loaded, a script runs in the initial empty document, whose origin is "null"
        wait_for(lambda: page.evaluate("location.origin + ' ' + document.readyState") == f"{page_origin} complete",
                 "the app's page")
        return page.evaluate(script)

    return dict(run_browser(chromium, tmp_path / "profile", f"{page_origin}/app.html", work))


def test_a_browser_app_on_another_origin_uses_the_api(server_factory: Callable[..., ServerProcess],
                                                      page_server: tuple[str, dict[str, bytes]],
                                                      tmp_path: Path) -> None:
    page_origin = page_server[0]
    server = server_factory("sqlite", cors_origins=f"https://elsewhere.example, {page_origin}")
    got = run_app(server, page_server, tmp_path)
    assert got.get("created") == 201 and got["read"] == 200 and got["family"] == "Cors", got
    assert got["location"].startswith(f"{server.base}/Patient/") and got["etag"] == 'W/"1"', got
    assert got["anonymous"] == 401 and got["challenge"].startswith("Bearer"), got
    assert got["download"] == "cross-origin bytes", got  # the signed URL, credentials and X-Medplum included
    assert httpx.get(f"{server.base}/metadata", params={"_elements": "rest"}).json()["rest"][0]["security"]["cors"]
    # a preflight from an origin not listed is refused and names no allowed origin
    refused = httpx.options(f"{server.base}/Patient", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


def test_without_cors_origins_the_browser_blocks_other_origins(server_factory: Callable[..., ServerProcess],
                                                               page_server: tuple[str, dict[str, bytes]],
                                                               tmp_path: Path) -> None:
    server = server_factory("sqlite")
    got = run_app(server, page_server, tmp_path)
    assert "blocked" in got, got
    security = httpx.get(f"{server.base}/metadata", params={"_elements": "rest"}).json()["rest"][0]["security"]
    assert security["cors"] is False  # it claimed CORS it did not give


def test_a_wildcard_allows_any_origin_without_credentials(server_factory: Callable[..., ServerProcess]) -> None:
    """`*` names no origin, so browsers refuse it for credentialed requests; it never answers with credentials
    allowed (any site could then send a browser's stored credentials along)."""
    server = server_factory("sqlite", cors_origins="*")
    asked = {"Origin": "https://any.example", "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization"}
    preflight = httpx.options(f"{server.base}/Patient", headers=asked)
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in preflight.headers

