"""DICOM video plays in headless Chromium from WADO-RS rendered, seeking over HTTP Range.

How a page authorises media: a ``<video>`` element cannot send ``Authorization``, so the page
asks ``POST /viewer-api/…/instances/{sop}/media-url`` with its bearer token and gets a URL with
a five-minute ``media_token`` bound to that instance and to the signed-in principal
(viewer_api/video_api.py). The page here is a minimal stand-in for the viewer: same origin as
the node (it opens /healthz, then replaces the document), fetches the media URL, plays, seeks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imaging_cloud.node import Node
from tests.e2e.conftest import ARTIFACTS
from tests.support.servers import client, http_base, running_node, token_for
from tests.support.video import make_mp4, video_part10

pytestmark = [pytest.mark.needs_chromium, pytest.mark.needs_ffmpeg]
SHOTS = ARTIFACTS.parent / "video"

PAGE = """<!doctype html><meta charset="utf-8"><title>video</title>
<video id="v" muted playsinline preload="metadata" width="320" height="240"></video>
<script>
window.mediaReady = (async () => {
  const answer = await fetch(MEDIA_URL_ENDPOINT, {
    method: "POST", headers: {Authorization: "Bearer " + TOKEN}});
  if (!answer.ok) throw new Error("media-url " + answer.status);
  const issued = await answer.json();
  document.getElementById("v").src = issued.url;
  return issued.url;
})();
</script>"""


@pytest.fixture(scope="module")
def video_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, str, bytes]]:
    folder = tmp_path_factory.mktemp("video-e2e")
    mp4 = make_mp4(folder / "clip.mp4", seconds=3.0, size=(320, 240), colour=None, gop=12)
    with running_node(folder / "node") as node:
        node.archive.store(video_part10(mp4), source="e2e")
        with client(node) as http:
            study = http.get("/dicom-web/studies").json()[0]["0020000D"]["Value"][0]
            found = http.get(f"/dicom-web/studies/{study}/instances").json()[0]
        path = (
            f"/studies/{study}/series/{found['0020000E']['Value'][0]}"
            f"/instances/{found['00080018']['Value'][0]}"
        )
        yield node, path, mp4.read_bytes()


def test_video_plays_and_seeks_with_range_requests(
    browser: Any, video_node: tuple[Node, str, bytes], tmp_path: Path
) -> None:
    node, path, mp4 = video_node
    base = http_base(node)
    page = browser.new_page()
    media: list[tuple[str | None, int]] = []

    def on_response(response: Any) -> None:
        if "/rendered" in response.url:
            media.append((response.request.headers.get("range"), response.status))

    page.on("response", on_response)
    try:
        page.goto(base + "/healthz")  # same origin as the API, for the page's fetch
        html = PAGE.replace("MEDIA_URL_ENDPOINT", repr(f"/viewer-api{path}/media-url")).replace(
            "TOKEN", repr(token_for(node))
        )
        page.set_content(html)
        url = page.evaluate("window.mediaReady")
        assert "media_token=" in url
        page.wait_for_function("document.getElementById('v').readyState >= 1", timeout=15000)
        duration = page.evaluate("document.getElementById('v').duration")
        assert abs(duration - 3.0) < 0.1
        page.evaluate("document.getElementById('v').play()")
        page.wait_for_function("document.getElementById('v').currentTime > 0.2", timeout=15000)
        page.evaluate("document.getElementById('v').pause()")
        page.evaluate("document.getElementById('v').currentTime = 1.5")
        page.wait_for_function(
            "(() => { const v = document.getElementById('v');"
            " return !v.seeking && v.readyState >= 2; })()",
            timeout=15000,
        )
        state = page.evaluate(
            "(() => { const v = document.getElementById('v');"
            " return {t: v.currentTime, ready: v.readyState, error: v.error && v.error.code}; })()"
        )
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "video_seek_1_5s.png"))
    finally:
        page.close()
    assert state["error"] is None
    assert abs(state["t"] - 1.5) < 0.05 and state["ready"] >= 2, state
    ranged = [status for header, status in media if header and header.startswith("bytes=")]
    assert ranged and all(status in (200, 206) for status in ranged), media
    assert 206 in ranged, media
    # what the browser fetched is the archived MP4, not a re-encode
    whole = httpx.get(base + url, timeout=30)
    assert whole.content == mp4
