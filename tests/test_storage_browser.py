"""A real browser (headless Chromium over the DevTools protocol) loads signed URLs in <img> and <video>,
plays and seeks the video through range requests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI
from tests.support.binary import signed_url_of
from tests.support.server import ServerProcess, free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio"]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (scripts/test installs it), and CI=true requires it")
        pytest.skip(f"{name} is not installed (scripts/test installs it)")
    return path


def png(width: int, height: int) -> bytes:
    """A real RGB PNG: a gradient, encoded by hand with zlib."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    rows = b"".join(b"\0" + b"".join(bytes((x * 255 // width, y * 255 // height, 128)) for x in range(width))
                    for y in range(height))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def webm(ffmpeg: str, directory: Path) -> bytes:
    """A 6-second VP8 test pattern with a keyframe every second, so it can be seeked."""
    out = directory / "clip.webm"
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=duration=6:size=320x240:rate=15",
                    "-c:v", "libvpx", "-b:v", "400k", "-g", "15", str(out)], check=True)
    return out.read_bytes()


class Page:
    """One page target of a browser, driven over the DevTools websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}")
                return dict(message["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


def wait_for(get: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = get()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def page_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A plain HTTP server on another origin than fhirvault that serves the test page."""
    pages: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            body = pages.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", pages
    finally:
        httpd.shutdown()


PLAY_AND_SEEK = """
(async () => {
  const img = document.getElementById('photo');
  const video = document.getElementById('clip');
  await img.decode();
  if (video.readyState < 1) {
    await new Promise((resolve, reject) => {
      video.addEventListener('loadedmetadata', resolve, {once: true});
      video.addEventListener('error', () => reject(new Error('video error ' + video.error.code)), {once: true});
    });
  }
  await video.play();
  video.pause();
  const target = video.duration * 0.8;
  const seeked = new Promise(resolve => video.addEventListener('seeked', resolve, {once: true}));
  video.currentTime = target;
  await seeked;
  const s = video.seekable;
  return {naturalWidth: img.naturalWidth, duration: video.duration, currentTime: video.currentTime,
          target: target, ranges: s.length, seekStart: s.length ? s.start(0) : -1,
          seekEnd: s.length ? s.end(0) : -1};
})()
"""


def test_img_and_video_load_play_and_seek_through_signed_urls(
        server_factory: Callable[..., ServerProcess], page_server: tuple[str, dict[str, bytes]],
        tmp_path: Path) -> None:
    server = server_factory("sqlite", storage_mode="filesystem")
    chromium = require_tool("chromium")
    ffmpeg = require_tool("ffmpeg")
    tmp = tmp_path
    with server.api() as api:
        clip = webm(ffmpeg, tmp)
        image = png(64, 48)
        img_url = signed_url_of(api.post("/Binary", content=image, headers={"Content-Type": "image/png"}))
        video_url = signed_url_of(api.post("/Binary", content=clip, headers={"Content-Type": "video/webm"}))
        before = storage_206_lines(server)
        origin, pages = page_server
        pages["/"] = (f'<!doctype html><title>signed</title><img id="photo" src="{img_url}">'
                      f'<video id="clip" src="{video_url}" muted preload="auto"></video>').encode()

        def play(page: Page) -> Any:
            loaded = "document.readyState === 'complete' && !!document.getElementById('clip')"
            wait_for(lambda: page.evaluate(loaded), "the page to load")
            return page.evaluate(PLAY_AND_SEEK)

        result = run_browser(chromium, tmp / "profile", f"{origin}/", play)
        print("browser saw:", result)
    assert result["naturalWidth"] == 64
    assert result["duration"] == pytest.approx(6, abs=0.5)
    assert result["ranges"] >= 1 and result["seekStart"] == 0
    assert result["seekEnd"] >= result["duration"] - 0.01
    assert abs(result["currentTime"] - result["target"]) < 1.0
    # The browser asked for ranges and got partial content from the storage route.
    answered = storage_206_lines(server)[len(before):]
    assert answered, "the storage route answered no 206 to the browser"
    assert all("sig=REDACTED" in line for line in answered)  # signatures stay out of the log


def storage_206_lines(server: ServerProcess) -> list[str]:
    text = server.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if "/storage/" in line and " 206 " in line]


@pytest.fixture
def beacon_server() -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    """Another origin that serves test pages and records every path asked of it (the beacons)."""
    pages: dict[str, bytes] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server naming
            hits.append(self.path)
            body = pages.get(self.path, b"")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Access-Control-Allow-Origin", "*")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", pages, hits
    finally:
        httpd.shutdown()


def run_browser(chromium: str, profile: Path, url: str, work: Callable[[Page], Any]) -> Any:
    """Opens `url` in headless Chromium and runs `work` on its page; the browser is gone afterwards."""
    port = free_port()
    browser = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        targets = wait_for(lambda: [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                                    if t.get("type") == "page" and t.get("url", "").startswith(url)],
                           "the browser's page target")
        from websockets.sync.client import connect

        with connect(targets[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            return work(Page(ws))
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()


@pytest.mark.parametrize("inline_active", [False, True], ids=["attachment", "inline-but-sandboxed"])
def test_stored_html_and_svg_never_run_script(
        server_factory: Callable[..., ServerProcess], beacon_server: tuple[str, dict[str, bytes], list[str]],
        tmp_path: Path, inline_active: bool) -> None:
    """Uploaded HTML and SVG with scripts, loaded through their signed URLs in frames, an <img>, an <object>
    and as the top-level document: no script runs. With the default settings they are attachments; with
    HTML and SVG put on INLINE_CONTENT_TYPES (a misconfiguration) the CSP sandbox alone still holds."""
    chromium = require_tool("chromium")
    extra = {"inline_content_types": "text/html,image/svg+xml,image/png"} if inline_active else {}
    server = server_factory("sqlite", **extra)
    origin, pages, hits = beacon_server
    html = (f"<!doctype html><title>stored</title><script>document.title='ran';fetch('{origin}/ran-html')"
            f"</script><img src='{origin}/ran-html-img'>").encode()
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" onload="fetch(\'{origin}/ran-svg-onload\')">'
           f"<script>fetch('{origin}/ran-svg')</script></svg>").encode()
    with server.api() as api:
        html_url = api.post("/Binary", content=html, headers={"Content-Type": "text/html"}).links["alternate"]["url"]
        svg_url = api.post("/Binary", content=svg, headers={"Content-Type": "image/svg+xml"}).links["alternate"]["url"]
    control = f"<script>fetch('{origin}/control')</script>".replace("'", "&#39;")
    pages["/"] = (f'<!doctype html><iframe src="{html_url}"></iframe><iframe src="{svg_url}"></iframe>'
                  f'<img src="{svg_url}"><object data="{svg_url}" type="image/svg+xml"></object>'
                  f'<iframe srcdoc="{control}"></iframe>'
                  f"<script>addEventListener('load', () => fetch('{origin}/loaded'))</script>").encode()

    def visit(page: Page) -> str:
        wait_for(lambda: "/loaded" in hits and "/control" in hits, "the page and its frames to load")
        page.call("Page.enable")
        page.call("Page.navigate", url=html_url)  # the stored page as the top-level document
        if inline_active:
            wait_for(lambda: page.evaluate("document.readyState === 'complete' && location.href") == html_url,
                     "the stored page to load")
        page.call("Page.navigate", url=f"{origin}/")
        wait_for(lambda: hits.count("/loaded") >= 2, "the test page to load again")
        return str(page.evaluate("document.title"))

    run_browser(chromium, tmp_path / "profile", f"{origin}/", visit)
    ran = [h for h in hits if h.startswith("/ran")]
    assert ran == [], f"stored content ran script in the browser: {ran}"
    assert "/control" in hits  # a script in a frame that is not stored content does run and is seen
