"""The surgical video pages in headless Chromium: the search page (/videos/) lists what the
search API returns for a filter and draws the chart API's numbers; the multi-view wall
(/videos/wall) plays 16 videos at once in a 4x4 grid and refuses more than 64.

Sixteen catalogued videos are made from one small generated clip (FFmpeg testsrc2, 2 s,
160x120), each wrapped as its own study with its own procedure, surgeon and operation times.
The pages are tested under their real CSP (no bypass), so plotly and the <video> tiles must
work with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from imaging_cloud.node import Node
from tests.e2e.conftest import ARTIFACTS
from tests.support.servers import client, http_base, running_node, token_for
from tests.support.video import make_mp4, video_part10

pytestmark = [pytest.mark.needs_chromium, pytest.mark.needs_ffmpeg]
SHOTS = ARTIFACTS.parent / "video"
PROCEDURES = ["Cholecystectomy 胆囊切除术", "Appendectomy 阑尾切除术", "Hernia repair 疝修补术"]
SURGEONS = ["Dr Li 李医生", "Dr Zhang 张医生", "Dr Chen 陈医生"]
COUNT = 16


@dataclass(frozen=True)
class Catalogue:
    node: Node
    sops: list[str]


def wait_until(page: Any, expression: str, timeout: float = 20.0) -> Any:
    """Poll ``expression`` until truthy (wait_for_function needs eval, which the CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


def _operation(i: int) -> tuple[str, str]:
    month = 1 + i % 3
    minutes = 20 + 10 * i
    start = f"2026-{month:02d}-{10 + i:02d}T08:00:00"
    hours, rest = divmod(minutes, 60)
    end = f"2026-{month:02d}-{10 + i:02d}T{8 + hours:02d}:{rest:02d}:00"
    return start, end


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogue]:
    folder = tmp_path_factory.mktemp("video-pages")
    mp4 = make_mp4(folder / "clip.mp4", seconds=2.0, size=(160, 120), colour=None, audio=False)
    with running_node(folder / "node") as node:
        for i in range(COUNT):
            start, end = _operation(i)
            part10 = video_part10(
                mp4,
                patient_id=f"P-WALL-{i:02d}",
                procedure=PROCEDURES[i % 3],
                surgeon=SURGEONS[i % 3],
                diagnosis="Test 测试",
                hospital="Chongqing 重庆",
                operation_start=start,
                operation_end=end,
            )
            node.archive.store(part10, source="e2e")
        with client(node) as http:
            answer = http.get("/api/videos", params={"limit": 100})
        assert answer.status_code == 200, answer.text
        sops = [v["sopInstanceUid"] for v in answer.json()["videos"]]
        assert len(sops) == COUNT
        yield Catalogue(node, sops)


def _page(browser: Any, catalogue: Catalogue, path: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.csp_errors = errors
    joiner = "&" if "?" in path else "?"
    page.goto(f"{http_base(catalogue.node)}{path}{joiner}token={token_for(catalogue.node)}")
    wait_until(page, "document.body.classList.contains('ready')")
    return page


def test_the_search_page_lists_the_apis_videos_and_draws_its_numbers(
    browser: Any, catalogue: Catalogue
) -> None:
    filters = {"surgeon": "Li", "dateFrom": "2026-01-01", "maxMinutes": "150"}
    with client(catalogue.node) as http:
        expected = http.get("/api/surgical-search", params=filters).json()
        charts = http.get("/api/surgical-search/charts", params=filters).json()
    page = _page(browser, catalogue, "/videos/")
    try:
        form = page.locator("#filters")
        form.locator("input[name=surgeon]").fill(filters["surgeon"])
        form.locator("input[name=dateFrom]").fill(filters["dateFrom"])
        form.locator("input[name=maxMinutes]").fill(filters["maxMinutes"])
        form.locator("button[type=submit]").click()
        wait_until(page, "location.search.includes('surgeon=Li') && !window.videoSearch.busy")
        wait_until(page, "document.querySelector('#chart-procedure .main-svg')")
        listed = page.evaluate(
            "[...document.querySelectorAll('#videos li.video')].map(li => li.dataset.sop)"
        )
        shown_text = page.inner_text("#videos")
        studies = page.evaluate(
            "[...document.querySelectorAll('#studies tbody tr')].map(tr => tr.dataset.study)"
        )
        drawn = page.evaluate(
            "Object.fromEntries(['procedure','month','surgeon','duration'].map(k => {"
            " const d = document.getElementById('chart-' + k).data[0];"
            " return [k, {x: [...d.x], y: [...d.y]}]; }))"
        )
        wait_until(page, "[...document.querySelectorAll('#videos img.thumb')].every(i => i.src)")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "video_search.png"), full_page=True)
        errors = list(page.csp_errors)
    finally:
        page.close()
    assert expected["videos"]["total"] > 0
    assert listed == [v["sopInstanceUid"] for v in expected["videos"]["items"]]
    assert studies == [s["studyInstanceUid"] for s in expected["studies"]["items"]]
    assert "Dr Li" in shown_text and "Dr Zhang" not in shown_text
    assert drawn["procedure"]["y"] == [r["count"] for r in charts["byProcedure"]]
    assert drawn["procedure"]["x"] == [r["procedure"] for r in charts["byProcedure"]]
    assert drawn["month"] == {
        "x": [r["month"] for r in charts["byMonth"]],
        "y": [r["count"] for r in charts["byMonth"]],
    }
    assert drawn["surgeon"]["y"] == [r["count"] for r in charts["bySurgeon"]]
    assert drawn["duration"]["y"] == [r["count"] for r in charts["durationHistogram"]]
    assert sum(drawn["month"]["y"]) == charts["total"] == expected["videos"]["total"]
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_the_multi_view_button_opens_the_wall_with_the_listed_videos(
    browser: Any, catalogue: Catalogue
) -> None:
    page = _page(browser, catalogue, "/videos/?" + urlencode({"surgeon": "Zhang"}))
    try:
        listed = page.evaluate("window.videoSearch.videos.map(v => v.sopInstanceUid)")
        page.click("#open-wall")
        wait_until(page, "location.pathname === '/videos/wall'")
        wait_until(page, "document.body.classList.contains('ready')")
        tiles = page.evaluate("[...document.querySelectorAll('.tile')].map(t => t.dataset.sop)")
    finally:
        page.close()
    assert listed and tiles == listed


def test_the_wall_plays_sixteen_videos_in_a_four_by_four_grid(
    browser: Any, catalogue: Catalogue
) -> None:
    page = _page(browser, catalogue, "/videos/wall?videos=" + ",".join(catalogue.sops))
    try:
        assert page.evaluate("document.getElementById('wall').dataset.grid") == "4x4"
        wait_until(
            page,
            "[...document.querySelectorAll('.tile video')].every(v => v.readyState >= 2"
            " && !v.paused && v.muted && v.loop)",
            40,
        )
        page.wait_for_timeout(500)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "video_wall_16.png"))
        tiles = page.evaluate(
            "[...document.querySelectorAll('.tile')].map(t => ({sop: t.dataset.sop,"
            " caption: t.querySelector('figcaption').textContent,"
            " time: t.querySelector('video').currentTime}))"
        )
        page.locator(".tile").nth(5).click()
        enlarged = page.evaluate("document.querySelectorAll('.tile.enlarged').length")
        link = page.get_attribute(".tile.enlarged a.open", "href")
        errors = list(page.csp_errors)
    finally:
        page.close()
    assert [t["sop"] for t in tiles] == catalogue.sops
    assert all(t["time"] > 0 for t in tiles), tiles
    assert all(any(p in t["caption"] for p in PROCEDURES) for t in tiles), tiles
    assert enlarged == 1 and link and link.startswith("/viewer/")
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_the_wall_refuses_more_than_sixty_four_videos(browser: Any, catalogue: Catalogue) -> None:
    many = ",".join([*catalogue.sops, *(f"1.2.3.{i}" for i in range(65 - COUNT))])
    page = _page(browser, catalogue, "/videos/wall?videos=" + many)
    try:
        message = page.inner_text("#wall-message")
        tiles = page.evaluate("document.querySelectorAll('.tile').length")
    finally:
        page.close()
    page = _page(browser, catalogue, "/videos/wall?limit=65")
    try:
        limit_message = page.inner_text("#wall-message")
    finally:
        page.close()
    assert "65" in message and "64" in message and tiles == 0
    assert "64" in limit_message


def test_the_wall_takes_the_search_filters_and_a_limit(browser: Any, catalogue: Catalogue) -> None:
    page = _page(browser, catalogue, "/videos/wall?" + urlencode({"q": "Appendectomy", "limit": 3}))
    try:
        count = page.evaluate("document.querySelectorAll('.tile').length")
        captions = page.inner_text("#wall")
        grid = page.evaluate("document.getElementById('wall').dataset.grid")
    finally:
        page.close()
    assert count == 3 and grid == "2x2"
    assert captions.count("Appendectomy") == 3


def test_the_pages_are_served_with_their_csp(catalogue: Catalogue, tmp_path: Path) -> None:
    with client(catalogue.node, None) as http:
        search = http.get("/videos/")
        wall = http.get("/videos/wall")
        script = http.get("/videos/static/wall.js")
        missing = http.get("/videos/static/nothing.js")
        page_as_file = http.get("/videos/static/index.html")
        again = http.get(
            "/videos/static/wall.js", headers={"If-None-Match": script.headers["etag"]}
        )
        redirected = http.get("/videos", params={"procedure": "胆囊"})
        plotly = http.get("/dashboard/vendor/plotly.min.js")
    csp = search.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "media-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert wall.headers["content-security-policy"] == csp
    assert "__PLOTLY_VERSION__" not in search.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert missing.status_code == 404 and page_as_file.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert again.status_code == 304 and again.headers["etag"] == script.headers["etag"]
    assert redirected.status_code == 308
    assert redirected.headers["location"] == "/videos/?procedure=%E8%83%86%E5%9B%8A"
    assert plotly.status_code == 200
