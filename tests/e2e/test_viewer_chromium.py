"""The web viewer in a real headless Chromium against a real node (no mocks).

A 60-slice synthetic CT (MPR offered) and a 30-slice second series are stored in a node; the
page at /viewer/ is driven with Playwright (sync API) on Debian's /usr/bin/chromium. Every
scenario leaves a screenshot in tests/artifacts/viewer/.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.e2e.conftest import ARTIFACTS
from tests.support.servers import ADMIN, PASSWORD, http_base, running_node, token_for

PIXEL_SPACING_MM = 0.5  # imaging_cloud.synthetic.ct_series
SIZE = 128
SLICES = 60
ACCESSION = "ACC-VIEWER-1"
IMAGE = ".viewport img.image[data-src]"

needs_chromium = pytest.mark.needs_chromium


class Study:
    """What the tests know about the stored study."""

    def __init__(self, node: Node, spec: StudySpec, series: list[str], sops: list[str]) -> None:
        self.node = node
        self.base = http_base(node)
        self.uid = spec.study_instance_uid
        self.series = series
        self.first_sops = sops
        self.token = token_for(node)

    def url(self, query: str) -> str:
        # The HIS embeds the viewer with the clinician's token; the page keeps it per tab.
        return f"{self.base}/viewer/?{query}&token={self.token}"

    def api(self, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.get(self.base + path, timeout=30, headers=headers)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    spec = StudySpec(
        patient=PatientSpec(patient_id="PID-V1", patient_name="Wang^XiaoDong=王^小東="),
        accession_number=ACCESSION,
        study_date="20250314",
        study_description="Chest CT 胸部",
    )
    with running_node(tmp_path_factory.mktemp("viewer") / "node") as node:
        series, sops = [], []
        for number, (slices, spacing) in enumerate([(SLICES, 1.0), (30, 2.0)], start=1):
            datasets = list(ct_series(spec, slices=slices, size=SIZE, series_number=number,
                                      spacing=spacing))  # fmt: skip
            for ds in datasets:
                node.archive.store(to_part10(ds), source="viewer-test")
            series.append(str(datasets[0].SeriesInstanceUID))
            sops.append(str(datasets[0].SOPInstanceUID))
        yield Study(node, spec, series, sops)


def require(study: Study, path: str, what: str) -> None:
    """The /viewer-api endpoint a scenario needs answers (a missing route fails the test)."""
    response = study.api(path)
    assert response.status_code < 400, f"{what} ({path.split('?')[0]}): {response.text}"


def rendered_path(study: Study, series: int = 0) -> str:
    return (
        f"/viewer-api/studies/{study.uid}/series/{study.series[series]}"
        f"/instances/{study.first_sops[series]}/frames/1/rendered"
    )


@pytest.fixture
def page(browser: Any, study: Study) -> Iterator[Any]:
    require(study, f"/viewer-api/studies/{study.uid}", "the study endpoint")
    require(study, rendered_path(study), "the rendered endpoint")
    # The page's CSP forbids eval; Playwright's wait_for_function needs it.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.set_default_timeout(10_000)
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def open_study(page: Any, study: Study, query: str | None = None) -> None:
    page.goto(study.url(query or f"study={study.uid}"))
    page.wait_for_selector(IMAGE)
    page.wait_for_function(  # the slice position comes with the series metadata
        "document.querySelector('.viewport .corner.bl').innerText.includes(' mm')"
    )


def corner(page: Any, which: str, viewport: int = 0) -> str:
    return str(page.locator(f".viewport .corner.{which}").nth(viewport).inner_text())


def shown(page: Any, viewport: int = 0) -> str:
    return str(page.locator(".viewport img.image").nth(viewport).get_attribute("data-src"))


def number(pattern: str, text: str) -> float:
    """The first group of ``pattern`` in ``text``, as a number."""
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in {text!r}"
    return float(found[1])


def centre_of(page: Any, selector: str) -> tuple[float, float]:
    box = page.locator(selector).first.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def wait_shown_change(page: Any, before: str, viewport: int = 0) -> str:
    page.wait_for_function(
        "([i, before]) => { const img = document.querySelectorAll('.viewport img.image')[i];"
        " return img && img.dataset.src && img.dataset.src !== before; }",
        arg=[viewport, before],
    )
    return shown(page, viewport)


def settled_window(page: Any) -> str:
    """The shown image once it has the window the overlay states (the latest request won)."""
    page.wait_for_function(
        "() => { const m = document.querySelector('.viewport .corner.br').innerText"
        ".match(/C (-?\\d+) \\/ W (\\d+)/);"
        " const src = document.querySelector('.viewport img.image').dataset.src || '';"
        " return m && src.includes(`window=${m[1]},${m[2]}`); }"
    )
    return shown(page)


# --- the page and its files, over plain HTTP ------------------------------------------------


def test_page_and_static_files_are_served_without_path_traversal(study: Study) -> None:
    page = study.api("/viewer/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'src="static/viewer.js"' in page.text
    script = study.api("/viewer/static/viewer.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert study.api("/viewer/static/viewer.css").headers["content-type"].startswith("text/css")
    moved = httpx.get(f"{study.base}/viewer?study=1.2.3", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/viewer/?study=1.2.3"
    etag = script.headers["etag"]
    again = httpx.get(f"{study.base}/viewer/static/viewer.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    for path in (
        "/viewer/static/..%2Fweb.py",
        "/viewer/static/%2E%2E/web.py",
        "/viewer/static/../web.py",
        "/viewer/static/..%2F..%2Fapp.py",
        "/viewer/static/.hidden",
        "/viewer/static/nothing.js",
    ):
        response = study.api(path)
        assert response.status_code == 404, path
        assert "import" not in response.text


# --- the viewer in Chromium --------------------------------------------------------------------


@needs_chromium
def test_loads_by_study_uid_with_series_thumbnails_and_corner_text(page: Any, study: Study) -> None:
    open_study(page, study)
    src = shown(page)
    assert f"/viewer-api/studies/{study.uid}/series/{study.series[0]}/instances/" in src
    page.wait_for_function(
        "document.querySelectorAll('#series-list img.thumb[src^=\"blob:\"]').length === 2"
    )
    assert "Wang XiaoDong" in corner(page, "tl")
    assert "PID-V1" in corner(page, "tl")
    assert "2025-03-14" in corner(page, "tr")
    assert "Im 1/60" in corner(page, "bl")
    assert "Pos 0.0 mm" in corner(page, "bl")
    assert re.search(r"C 40 / W 400", corner(page, "br"))
    assert "Zoom" in corner(page, "br")
    shot(page, "study")


@needs_chromium
def test_loads_by_accession_number_and_forwards_the_token(page: Any, study: Study) -> None:
    sent: list[tuple[str, str | None]] = []
    page.on(
        "request",
        lambda r: (
            sent.append((r.url, r.headers.get("authorization")))
            if "/viewer-api/" in r.url or "/dicom-web/" in r.url
            else None
        ),
    )
    open_study(page, study, f"accession={ACCESSION}")  # study.url adds &token=
    assert study.uid in shown(page)
    assert "Wang XiaoDong" in page.inner_text("#study-info")
    assert sent and all(auth == f"Bearer {study.token}" for _, auth in sent), sent
    assert all("token" not in url for url, _ in sent)
    assert "token" not in page.url  # taken out of the address bar (and history)
    shot(page, "accession")


@needs_chromium
def test_without_a_token_the_viewer_asks_to_sign_in(page: Any, study: Study) -> None:
    page.goto(f"{study.base}/viewer/?study={study.uid}")  # no HIS token
    page.wait_for_selector("#sign-in:not([hidden])")
    assert page.locator(IMAGE).count() == 0
    page.fill("#sign-in input[name=username]", ADMIN)
    page.fill("#sign-in input[name=password]", "not the password")
    page.click("#sign-in button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#sign-in .sign-in-error').textContent.length > 0"
    )
    assert "wrong username or password" in page.inner_text("#sign-in .sign-in-error")
    shot(page, "sign-in-refused")
    page.fill("#sign-in input[name=password]", PASSWORD)
    page.click("#sign-in button[type=submit]")
    page.wait_for_selector(IMAGE)
    assert page.locator("#sign-in").is_hidden()
    assert study.uid in shown(page)


@needs_chromium
def test_wheel_keys_and_slider_change_the_slice(page: Any, study: Study) -> None:
    open_study(page, study)
    first = shown(page)
    page.mouse.move(*centre_of(page, ".viewport .stage"))
    page.mouse.wheel(0, 100)
    second = wait_shown_change(page, first)
    assert "Im 2/60" in corner(page, "bl")
    assert "Pos 1.0 mm" in corner(page, "bl")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    wait_shown_change(page, second)
    page.wait_for_function(
        "document.querySelector('.viewport .corner.bl').innerText.includes('Im 4/60')"
    )
    assert "Pos 3.0 mm" in corner(page, "bl")
    page.locator(".viewport .slider").first.fill("30")
    page.wait_for_function(
        "document.querySelector('.viewport .corner.bl').innerText.includes('Im 31/60')"
    )
    assert "Pos 30.0 mm" in corner(page, "bl")
    shot(page, "scrolled")


@needs_chromium
def test_window_presets_and_mouse_drag_change_the_requested_window(page: Any, study: Study) -> None:
    open_study(page, study)
    before = shown(page)
    with page.expect_request(lambda r: "preset=lung" in r.url and "/rendered" in r.url):
        page.click("[data-preset=lung]")
    lung = wait_shown_change(page, before)
    assert "preset=lung" in lung
    page.wait_for_function(
        "document.querySelector('.viewport .corner.br').innerText.includes('C -600 / W 1500')"
    )
    page.click("[data-preset=bone]")
    page.wait_for_function(
        "document.querySelector('.viewport .corner.br').innerText.includes('C 400 / W 1800')"
    )
    bone = shown(page)
    assert "preset=bone" in bone

    x, y = centre_of(page, ".viewport .stage")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 30, steps=6)
    page.mouse.up()
    dragged = settled_window(page)
    window = re.search(r"window=(-?[\d.]+),([\d.]+)", dragged)
    assert window, dragged
    centre, width = float(window[1]), float(window[2])
    assert width > 1800 and centre > 400  # right = wider, down = higher centre

    page.mouse.move(x, y)  # right-drag windows whatever the tool
    page.mouse.down(button="right")
    page.mouse.move(x - 80, y, steps=4)
    page.mouse.up(button="right")
    wait_shown_change(page, dragged)
    narrower = settled_window(page)
    assert number(r"window=-?[\d.]+,([\d.]+)", narrower) < width
    shot(page, "window")


@needs_chromium
def test_length_and_angle_measurements(page: Any, study: Study) -> None:
    require(study, f"/viewer-api/studies/{study.uid}/series/{study.series[0]}/volume", "volume")
    open_study(page, study)
    page.click("[data-tool=length]")
    box = page.locator(".viewport img.image").first.bounding_box()
    scale = box["width"] / SIZE  # screen px per image pixel
    x0, y = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.7
    x1 = box["x"] + box["width"] * 0.8
    page.mouse.click(x0, y)
    page.mouse.click(x1, y)
    label = page.locator(".measure-label").first
    page.wait_for_function(
        "/mm$/.test(document.querySelector('.measure-label')?.textContent || '')"
    )
    measured = number(r"([\d.]+) mm", label.text_content())
    expected = (x1 - x0) / scale * PIXEL_SPACING_MM
    assert math.isclose(measured, expected, rel_tol=0.01), (measured, expected)

    page.click("[data-tool=angle]")  # first arm, vertex, second arm: a right angle
    vx, vy = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4
    page.mouse.click(vx - 80, vy)
    page.mouse.click(vx, vy)
    page.mouse.click(vx, vy - 80)
    page.wait_for_function(
        "[...document.querySelectorAll('.measure-label')].some(l => /°$/.test(l.textContent))"
    )
    angle = page.locator(".measure-label").filter(has_text="°").text_content()
    assert math.isclose(number(r"([\d.]+)°", angle), 90.0, abs_tol=0.2), angle
    shot(page, "length")


@needs_chromium
def test_ct_value_of_a_point_and_a_circle(page: Any, study: Study) -> None:
    require(study, f"/viewer-api/studies/{study.uid}/series/{study.series[0]}/volume", "volume")
    open_study(page, study)
    page.click("[data-tool=roi]")
    x, y = centre_of(page, ".viewport .stage")
    page.mouse.click(x, y)  # the disc is water-ish: 40 HU
    page.wait_for_function(
        "/HU|⚠/.test(document.querySelector('.measure-label')?.textContent || '')"
    )
    text = page.locator(".measure-label").first.text_content()
    mean = number(r"^(-?[\d.]+) HU", text)
    assert abs(mean - 40) < 2, text
    page.mouse.move(x + 100, y - 100)
    page.mouse.down()
    page.mouse.move(x + 140, y - 100, steps=4)
    page.mouse.up()
    page.wait_for_function(
        "[...document.querySelectorAll('.measure-label')].filter(l => /HU/.test(l.textContent))"
        ".length === 2"
    )
    shot(page, "ct-value")


@needs_chromium
def test_mpr_three_planes_with_cross_reference_and_slab(page: Any, study: Study) -> None:
    series = f"/viewer-api/studies/{study.uid}/series/{study.series[0]}"
    require(study, series + "/volume", "the volume endpoint")
    require(study, series + "/mpr?plane=axial", "the MPR endpoint")
    open_study(page, study)
    page.click("#mpr-open")
    page.wait_for_function(
        "[...document.querySelectorAll('.mpr-view img.image')].filter(i => i.dataset.src && "
        "i.dataset.quality === 'full').length === 3"
    )
    planes = page.eval_on_selector_all(".mpr-view", "els => els.map(e => e.dataset.plane)")
    assert planes == ["axial", "coronal", "sagittal"]
    page.wait_for_function("document.querySelectorAll('.mpr-view .xref').length === 6")
    before = page.eval_on_selector_all(".mpr-view img.image", "els => els.map(e => e.dataset.src)")
    assert all("/mpr?plane=" in src for src in before)

    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if "/mpr?" in r.url else None)
    page.select_option("#mpr-mode", "mip")
    page.select_option("#mpr-thickness", "20")
    page.wait_for_function(
        "[...document.querySelectorAll('.mpr-view img.image')].every(i => "
        "(i.dataset.src || '').includes('mode=mip&thickness=20'))"
    )
    for plane in planes:
        assert any(f"plane={plane}" in u and "mode=mip&thickness=20" in u for u in requested)
    assert "MIP 20 mm" in page.locator(".mpr-view .corner.bl").first.inner_text()

    axial = ".mpr-view[data-plane=axial]"
    position = page.locator(f"{axial} .corner.bl").inner_text()
    page.locator(f"{axial} .slider").fill("10")
    page.wait_for_function(
        "([sel, before]) => document.querySelector(sel).innerText !== before",
        arg=[f"{axial} .corner.bl", position],
    )
    page.select_option("#mpr-thickness", "custom")
    page.fill("#mpr-thickness-custom", "7.5")
    page.dispatch_event("#mpr-thickness-custom", "change")
    page.wait_for_function(
        "[...document.querySelectorAll('.mpr-view img.image')].every(i => "
        "(i.dataset.src || '').includes('thickness=7.5'))"
    )
    shot(page, "mpr")


@needs_chromium
def test_layouts_and_synchronised_scrolling(page: Any, study: Study) -> None:
    open_study(page, study)
    page.click("[data-layout='2x1']")
    page.wait_for_function(
        "document.querySelectorAll('#grid .viewport img.image[data-src]').length === 2"
    )
    assert study.series[1] in shown(page, 1)
    page.click("#sync")
    page.locator(".viewport .stage").first.click()
    before = shown(page, 1)
    page.keyboard.press("End")  # first viewport to its last image...
    wait_shown_change(page, before, 1)  # ...the second follows
    assert "Im 30/30" in corner(page, "bl", 1)
    page.click("[data-preset=lung]")
    page.wait_for_function(
        "[...document.querySelectorAll('#grid .viewport .corner.br')].every(c => "
        "c.innerText.includes('C -600 / W 1500'))"
    )
    shot(page, "layout-2x1-sync")
    page.click("[data-layout='2x2']")
    page.wait_for_function(
        "document.querySelectorAll('#grid .viewport img.image[data-src]').length === 4"
    )
    assert page.locator("#grid .viewport").count() == 4
    page.wait_for_function(  # the new viewports join the synchronised window
        "[...document.querySelectorAll('#grid .viewport .corner.br')].every(c => "
        "c.innerText.includes('C -600 / W 1500'))"
    )
    shot(page, "layout-2x2")


@needs_chromium
def test_cine_reaches_ten_frames_per_second(page: Any, study: Study) -> None:
    open_study(page, study)
    page.click("#cine")
    time.sleep(2.2)
    fps = page.evaluate("window.viewerStats.cineFps")
    frames = page.evaluate("window.viewerStats.cineFrames")
    shot(page, "cine")
    page.click("#cine")
    print(f"cine: {fps:.1f} fps, {frames} frames")
    assert fps >= 10, f"cine reached {fps:.1f} fps"


@needs_chromium
def test_fast_mode_shows_a_reduced_image_then_refines(page: Any, study: Study) -> None:
    detail = study.api(f"/viewer-api/studies/{study.uid}").json()
    sop = detail["series"][0]["instances"][45]["sop_instance_uid"]
    open_study(page, study)
    page.click("#fast")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if sop in r.url else None)
    page.locator(".viewport .slider").first.fill("45")
    page.wait_for_function(
        "sop => { const i = document.querySelector('.viewport img.image');"
        " return i.dataset.quality === 'full' && i.dataset.src.includes(sop); }",
        arg=sop,
    )
    assert "Im 46/60" in corner(page, "bl")
    assert len(requested) == 2, requested
    assert "size=128,128&quality=50" in requested[0]
    assert "quality" not in requested[1] and "size" not in requested[1]


def zoom_percent(page: Any) -> float:
    return number(r"Zoom (\d+)%", corner(page, "br"))


def touch_gestures(context: Any, page: Any) -> None:
    """One finger drags the window (default tool); two fingers pinch-zoom."""
    cdp = context.new_cdp_session(page)
    x, y = centre_of(page, ".viewport .stage")

    def touch(kind: str, *points: tuple[float, float]) -> None:
        touch_points = [{"x": px, "y": py, "id": i} for i, (px, py) in enumerate(points)]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touch_points})

    before = shown(page)
    touch("touchStart", (x, y))
    for step in range(1, 6):
        touch("touchMove", (x + 12 * step, y))
    touch("touchEnd")
    assert "window=" in wait_shown_change(page, before)
    zoom = zoom_percent(page)
    touch("touchStart", (x - 20, y), (x + 20, y))
    for step in range(1, 6):
        touch("touchMove", (x - 20 - 16 * step, y), (x + 20 + 16 * step, y))
    touch("touchEnd")
    page.wait_for_function(
        "z => +document.querySelector('.viewport .corner.br').innerText"
        ".match(/Zoom (\\d+)%/)[1] > z * 2",
        arg=zoom,
    )


@needs_chromium
def test_phone_viewport_without_horizontal_overflow(browser: Any, study: Study) -> None:
    require(study, f"/viewer-api/studies/{study.uid}", "the study endpoint")
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
        has_touch=True, bypass_csp=True,
    )  # fmt: skip
    page = context.new_page()
    try:
        open_study(page, study)
        assert "Im 1/60" in corner(page, "bl")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"page is {width}px wide"
        assert page.evaluate("document.body.scrollWidth") <= 390
        shot(page, "phone")
        touch_gestures(context, page)
        page.tap("#series-toggle")
        page.wait_for_function(  # open, and its slide-in transition over
            "getComputedStyle(document.querySelector('#series-panel')).transform === 'none'"
        )
        shot(page, "phone-series")
        page.locator(".series").nth(1).tap()
        page.wait_for_function(
            "document.querySelector('.viewport .corner.bl').innerText.includes('/30')"
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
    finally:
        context.close()


@needs_chromium
def test_unknown_study_shows_the_problem_detail(page: Any, study: Study) -> None:
    missing = "1.2.826.0.1.3680043.10.1370.999"
    detail = study.api(f"/viewer-api/studies/{missing}").json()["detail"]
    page.goto(study.url(f"study={missing}"))
    page.wait_for_selector("#error:not([hidden])")
    assert detail in page.inner_text("#error")
    shot(page, "error-unknown-study")
    page.goto(study.url("accession=NO-SUCH-ACCESSION"))
    page.wait_for_selector("#error:not([hidden])")
    assert "NO-SUCH-ACCESSION" in page.inner_text("#error")
