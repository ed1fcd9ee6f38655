"""The regulator dashboard in headless Chromium against a real node with a seeded region.

The page keeps its own CSP (a violation on the console fails the test); waits poll with
``page.evaluate``. The figures on the page (tiles, the data plotly drew) are compared with the
API's, which tests/integration/test_statistics.py compares with SQL. Screenshots go to
tests/artifacts/dashboard/.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from imaging_cloud.node import Node
from imaging_cloud.seed_draw import SeedOptions
from imaging_cloud.seed_region import SeedSummary, seed_region
from tests.support.servers import PASSWORD, client, http_base, running_node

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "dashboard"
DESKTOP = {"viewport": {"width": 1400, "height": 1000}, "accept_downloads": True}

pytestmark = pytest.mark.needs_chromium


@dataclass
class Site:
    node: Node
    base: str
    summary: SeedSummary

    def api(self) -> httpx.Client:
        return client(self.node, "regulator")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_node(tmp_path_factory.mktemp("dashboard") / "node") as node:
        summary = seed_region(node.archive, SeedOptions(hospitals=6, studies=150), accounts=False)
        node.archive.users.create_user("regulator", PASSWORD, "regulator")
        node.archive.users.create_user("doc.yz", PASSWORD, "clinician", hospital_id="CQ-YZ-01")
        yield Site(node, http_base(node), summary)


@pytest.fixture
def desk(browser: Any) -> Iterator[Any]:
    context = browser.new_context(**DESKTOP)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if _bad(m) else None)
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert not problems, f"errors on the page: {problems}"


def _bad(message: Any) -> bool:
    """CSP violations and script errors; a refused request (403) is the page's business."""
    text = str(message.text)
    return "Content Security" in text or (
        message.type == "error" and "Failed to load resource" not in text
    )


def until(page: Any, script: str, arg: Any = None, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


def loaded(page: Any, count: int) -> None:
    """Wait until the page finished its ``count``-th load of figures."""
    until(page, "(n) => window.dashboard.ready && window.dashboard.loads >= n", count)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, site: Site, username: str = "regulator") -> None:
    page.goto(f"{site.base}/dashboard/")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#sign-in-button")


def drawn(page: Any, chart: str, trace: int = 0) -> dict[str, list[Any]]:
    """What plotly drew in ``chart``: the x and y of one trace."""
    return page.evaluate(
        "([id, n]) => { const t = document.getElementById(id).data[n];"
        " return {x: [...t.x], y: [...t.y], name: t.name}; }",
        [chart, trace],
    )


def click_bar(page: Any, chart: str, index: int) -> None:
    """A real mouse click in the middle of the ``index``-th bar of ``chart``."""
    bar = page.locator(f"#{chart} .trace.bars .point path").nth(index)
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    assert box is not None and box["height"] > 0
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)


def test_the_regulator_sees_real_figures(desk: Any, site: Site) -> None:
    sign_in(desk, site)
    loaded(desk, 1)
    with site.api() as api:
        totals = api.get("/api/statistics/summary").json()["totals"]
        by_district = api.get(
            "/api/statistics/uploads", params={"period": "none", "by": "district"}
        ).json()
        months = {
            m: api.get(f"/api/statistics/{m}", params={"period": "month"}).json()
            for m in ("uploads", "views", "qc", "recognition")
        }
        places = api.get("/api/statistics/hospitals").json()["hospitals"]
    tiles = desk.evaluate(
        "[...document.querySelectorAll('.kpi')].map((k) => [k.dataset.metric, k.dataset.column,"
        " k.querySelector('.value').dataset.value, k.querySelector('.value').textContent])"
    )
    assert len(tiles) == 8
    for metric, column, value, shown in tiles:
        wanted = totals[metric][column]
        assert (float(value) if value else None) == wanted, (metric, column)
        assert shown != "\u2013", "a figure, not the placeholder dash"
    assert int(desk.get_attribute(".kpi[data-column=uploads] .value", "data-value")) == 150

    compare = drawn(desk, "chart-compare")
    assert compare["x"] == [r["district"] for r in by_district["rows"]]
    assert compare["y"] == [r["uploads"] for r in by_district["rows"]]
    uploads = drawn(desk, "chart-uploads")
    assert uploads["x"] == [r["period"] for r in months["uploads"]["rows"]]
    assert uploads["y"] == [r["uploads"] for r in months["uploads"]["rows"]]
    staff = drawn(desk, "chart-views", 0)
    assert staff["y"] == [r["staff_views"] for r in months["views"]["rows"]]
    rate = drawn(desk, "chart-qc", 2)
    assert rate["y"] == [r["pass_rate"] for r in months["qc"]["rows"]]
    accepted = drawn(desk, "chart-recognition", 0)
    assert accepted["y"] == [r["accepted"] for r in months["recognition"]["rows"]]
    assert desk.get_attribute("#chart-map", "data-hospitals") == str(len(places)) == "6"
    assert desk.locator("#chart-map .scatterlayer .point").count() == 6
    shot(desk, "01-region")
    nothing = desk.evaluate("() => [localStorage.length, sessionStorage.length, document.cookie]")
    assert nothing == [0, 0, ""], "the token lives in the page's memory only"


def test_drill_down_by_clicking(desk: Any, site: Site) -> None:
    sign_in(desk, site)
    loaded(desk, 1)
    compare = drawn(desk, "chart-compare")
    biggest = compare["y"].index(max(compare["y"]))
    district = compare["x"][biggest]
    click_bar(desk, "chart-compare", biggest)  # district → its hospitals
    loaded(desk, 2)
    assert desk.get_attribute("#chart-compare", "data-by") == "hospital"
    assert desk.input_value("#district") == district
    with site.api() as api:
        hospitals = api.get(
            "/api/statistics/uploads",
            params={"period": "none", "by": "hospital", "district": district},
        ).json()["rows"]
    assert drawn(desk, "chart-compare")["y"] == [r["uploads"] for r in hospitals]
    assert sum(r["uploads"] for r in hospitals) == max(compare["y"])
    assert desk.inner_text("#crumbs button[aria-current=true]") == district
    shot(desk, "02-district-hospitals")

    busiest = max(hospitals, key=lambda r: r["uploads"])
    table = desk.locator("#compare-table tbody button")
    table.filter(has_text=busiest["hospital"]).click()  # → its months
    loaded(desk, 3)
    assert desk.input_value("#hospital") == busiest["hospital_id"]
    months = drawn(desk, "chart-uploads")
    assert sum(months["y"]) == busiest["uploads"]
    shot(desk, "03-hospital-months")

    month = months["y"].index(max(months["y"]))
    click_bar(desk, "chart-uploads", month)  # → that month's days
    loaded(desk, 4)
    days = drawn(desk, "chart-uploads")
    assert all(day.startswith(months["x"][month]) for day in days["x"])
    assert sum(days["y"]) == months["y"][month]
    assert desk.get_attribute("#chart-uploads", "data-period") == "day"
    assert desk.input_value("#period") == "day"
    shot(desk, "04-month-days")

    desk.click("#crumbs button[data-depth='0']")  # back to the whole region
    loaded(desk, 5)
    assert desk.input_value("#hospital") == "" and desk.input_value("#district") == ""
    assert drawn(desk, "chart-compare")["x"] == compare["x"]


def test_map_click_and_csv_export(desk: Any, site: Site) -> None:
    sign_in(desk, site)
    loaded(desk, 1)
    point = desk.locator("#chart-map .scatterlayer .point").first
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    assert box is not None
    desk.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    loaded(desk, 2)
    chosen = desk.input_value("#hospital")
    assert chosen in site.summary.hospitals
    shot(desk, "05-map-hospital")
    with desk.expect_download() as download_info:
        desk.click("button.csv[data-chart=uploads]")
    download = download_info.value
    assert download.suggested_filename == "uploads-month-none.csv"
    content = Path(download.path()).read_bytes()
    assert content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(content.decode("utf-8-sig"))))
    assert [r["period"] for r in rows] == drawn(desk, "chart-uploads")["x"]
    assert [int(r["uploads"]) for r in rows] == drawn(desk, "chart-uploads")["y"]


def test_a_clinician_is_told_no(desk: Any, site: Site) -> None:
    sign_in(desk, site, "doc.yz")
    desk.wait_for_selector("#sign-in-message.error")
    assert "may not see statistics" in desk.inner_text("#sign-in-message")
    assert desk.is_hidden("#board")
    shot(desk, "06-clinician-refused")
