"""tus-js-client (npm) uploads to a real server: from node through a connection that is cut mid-upload,
and from a page in headless Chromium (a generated 50 MiB file)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.support.cut_proxy import CutProxy, cut_proxy
from tests.support.server import ServerProcess, free_port, settings_env
from tests.test_interop_medplum import node_or_skip as medplum_node_or_skip
from tests.test_storage_browser import Page, require_tool, run_browser, wait_for
from tests.test_storage_browser import page_server as page_server  # noqa: F401 - the fixture

JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "tus_upload.mjs"
TUS_JS = JS_DIR / "node_modules" / "tus-js-client"
MiB = 1024 * 1024


def node_or_skip() -> str:
    """node with tests/js installed (the MedplumClient tests' check), and tus-js-client among it."""
    node = medplum_node_or_skip()
    if not TUS_JS.exists():
        if IN_CI:
            pytest.fail("tus-js-client is not installed (npm install in tests/js), and CI=true requires it")
        pytest.skip("tus-js-client is not installed: run `npm install` in tests/js")
    return node


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, CutProxy]]:
    with ExitStack() as stack:
        port = free_port()
        proxy = stack.enter_context(cut_proxy(port))
        server = ServerProcess(tmp_path_factory.mktemp("tus-js"),
                               settings_env(public_base_url=proxy.url, upload_cors_origin="*"), port=port).start()
        stack.callback(server.stop)
        yield server, proxy


def binary_bytes(server: ServerProcess, upload_url: str) -> tuple[bytes, dict[str, Any]]:
    h = server.auth_headers()
    head = httpx.head(upload_url, headers={**h, "Tus-Resumable": "1.0.0"})
    assert head.status_code == 200 and "x-binary-id" in head.headers, head.headers
    with server.api() as api:
        binary_id = head.headers["x-binary-id"]
        resource = api.get(f"/Binary/{binary_id}", headers={"Accept": "application/fhir+json"}).json()
        return api.get(f"/Binary/{binary_id}").content, resource


@pytest.mark.parametrize("chunk", [0, 4 * MiB], ids=["one-patch", "4MiB-patches"])
def test_node_upload_resumes_after_a_cut(proxied: tuple[ServerProcess, CutProxy], tmp_path: Path,
                                         chunk: int) -> None:
    node = node_or_skip()
    server, proxy = proxied
    data = os.urandom(11 * MiB + 17)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    token = server.auth_headers()["Authorization"].split()[1]
    before, cuts = proxy.sent, proxy.cuts
    proxy.cut_after(int(len(data) * 0.9))
    done = subprocess.run([node, str(SCRIPT), f"{proxy.url}/fhir/R4/Binary/$upload", token, str(path), str(chunk),
                           json.dumps({"filename": "clip.mp4", "filetype": "video/mp4"})],
                          cwd=JS_DIR, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stderr}\n--- server log ---\n{server.log()}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert proxy.cuts == cuts + 1 and out["retries"] >= 1
    content, resource = binary_bytes(server, out["url"])
    assert content == data
    assert resource["contentType"] == "video/mp4"
    assert resource["meta"]["extension"][0]["valueString"] == "clip.mp4"
    # Only what the server had not stored went again (tus-js-client asks for the offset after the cut),
    # not the whole file (which would be 1.9 times it). With patches, one patch more may go again: on a
    # loaded machine the client asked before the server had seen the cut (14.7 MB sent for 11.5 once).
    assert proxy.sent - before < len(data) * 1.12 + chunk, proxy.sent - before


BROWSER_UPLOAD = """
(async () => {
  const size = 50 * 1024 * 1024;
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + 7) % 251;
  const file = new File([bytes], 'generated.bin', {type: 'application/octet-stream'});
  return await new Promise((resolve, reject) => {
    const upload = new tus.Upload(file, {
      endpoint: ENDPOINT,
      headers: {Authorization: 'Bearer ' + TOKEN},
      metadata: {filename: file.name, filetype: file.type},
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 500],
      onError: (e) => reject(new Error(String(e))),
      onSuccess: () => resolve({url: upload.url}),
    });
    upload.start();
  });
})()
"""


def test_browser_uploads_a_generated_50_mib_file(proxied: tuple[ServerProcess, CutProxy],
                                                  page_server: tuple[str, dict[str, bytes]],  # noqa: F811
                                                  tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    node_or_skip()
    server, _ = proxied
    origin, pages = page_server
    bundle = (TUS_JS / "dist" / "tus.min.js").read_bytes()
    pages["/"] = b"<!doctype html><title>tus</title><script>" + bundle + b"</script>"
    token = server.auth_headers()["Authorization"].split()[1]
    # The page is on another origin: the browser's CORS preflight and exposed headers are exercised.
    script = (BROWSER_UPLOAD.replace("ENDPOINT", json.dumps(f"{server.base}/Binary/$upload"))
              .replace("TOKEN", json.dumps(token)))

    def upload(page: Page) -> Any:
        wait_for(lambda: page.evaluate("document.readyState === 'complete' && typeof tus === 'object'"),
                 "the page and tus-js-client to load")
        return page.evaluate(script)

    result = run_browser(chromium, tmp_path / "profile", f"{origin}/", upload)
    content, resource = binary_bytes(server, result["url"])
    period = bytes((i * 31 + 7) % 251 for i in range(251))  # the page's pattern repeats every 251 bytes
    assert len(content) == 50 * MiB
    assert content == (period * (50 * MiB // 251 + 1))[:50 * MiB]
    assert resource["meta"]["extension"][0]["valueString"] == "generated.bin"
    assert resource["contentType"] == "application/octet-stream"
