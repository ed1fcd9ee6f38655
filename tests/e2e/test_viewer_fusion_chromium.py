"""PET/CT fusion in the web viewer's MPR view, in a real headless Chromium against a real node.

A 60-slice CT and a 50-slice PET sharing its frame of reference (a hot square at x, y = 8..15 mm,
as in tests/integration/test_viewer_fusion.py) plus a PET in another frame of reference are
stored; the MPR view overlays the PET through …/fusion and goes back to …/mpr on "none".
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, pet_series, to_part10
from tests.e2e.conftest import ARTIFACTS
from tests.support.servers import http_base, running_node, token_for

pytestmark = pytest.mark.needs_chromium

AXIAL = ".mpr-view[data-plane=axial]"
ALL_FULL = (
    "(part) => { const imgs = [...document.querySelectorAll('.mpr-view img.image')]; "
    "return imgs.length === 3 && imgs.every(i => i.dataset.quality === 'full' && "
    "(i.dataset.src || '').includes(part)); }"
)


@dataclass
class FusionStudy:
    base: str
    token: str
    uid: str
    ct: str
    pet: str
    elsewhere: str


@pytest.fixture(scope="module")
def fusion_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FusionStudy]:
    spec = StudySpec(patient=PatientSpec(patient_id="FUS-E2E", patient_name="Zhou^Jiu"))
    ct = list(ct_series(spec, slices=60, size=64))
    pet = pet_series(spec, str(ct[0].FrameOfReferenceUID))
    elsewhere = pet_series(spec, generate_uid())
    elsewhere_uid = generate_uid()
    for ds in elsewhere:
        ds.SeriesInstanceUID = elsewhere_uid
        ds.SeriesDescription = "PET elsewhere"
        ds.SeriesNumber = 3
        ds.SOPInstanceUID = generate_uid()
    with running_node(tmp_path_factory.mktemp("fusion-e2e") / "node") as node:
        for ds in [*ct, *pet, *elsewhere]:
            node.archive.store(to_part10(ds), source="viewer-test")
        yield FusionStudy(
            http_base(node),
            token_for(node),
            spec.study_instance_uid,
            str(ct[0].SeriesInstanceUID),
            str(pet[0].SeriesInstanceUID),
            elsewhere_uid,
        )


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # The page's CSP forbids eval; Playwright's wait_for_function needs it.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    opened.set_default_timeout(10_000)
    yield opened
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _axial_rgb(page: Any, name: str) -> np.ndarray:
    """The axial image as painted (cross-reference lines and corner text hidden), saved."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.evaluate("document.body.classList.add('fusion-test-bare')")
    try:
        png = page.locator(f"{AXIAL} img.image").screenshot()
    finally:
        page.evaluate("document.body.classList.remove('fusion-test-bare')")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_pet_overlay_in_mpr(page: Any, fusion_study: FusionStudy) -> None:
    fs = fusion_study
    page.goto(f"{fs.base}/viewer/?study={fs.uid}&token={fs.token}")
    page.wait_for_selector(".viewport img.image[data-src]")
    page.add_style_tag(
        content=".fusion-test-bare .mpr-view .overlay, .fusion-test-bare .mpr-view .corner, "
        ".fusion-test-bare .mpr-view .slider { visibility: hidden !important; }"
    )
    page.click(f".series[data-series='{fs.ct}']")
    page.wait_for_function("!document.querySelector('#mpr-open').disabled")
    page.click("#mpr-open")
    page.wait_for_function(ALL_FULL, arg="/mpr?plane=")

    labels = page.eval_on_selector_all("#fusion-series option", "os => os.map(o => o.text)")
    assert labels[0].startswith("None")
    assert any("PT Synthetic PET" in label for label in labels), labels
    assert not any(fs.ct in v for v in page.eval_on_selector_all(
        "#fusion-series option", "os => os.map(o => o.value)"))  # fmt: skip
    assert page.input_value("#fusion-opacity") == "0.5"

    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url) if "/fusion?" in r.url else None)
    page.select_option("#fusion-series", fs.pet)
    page.wait_for_function(ALL_FULL, arg=f"/fusion?overlay={fs.pet}&plane=")
    for plane in ("axial", "coronal", "sagittal"):
        assert any(f"overlay={fs.pet}&plane={plane}" in u and "opacity=0.5" in u
                   and "colour_map=hot" in u for u in requested), requested  # fmt: skip
    page.wait_for_function(
        "(sel) => document.querySelector(sel).innerText.includes('Overlay C')",
        arg=f"{AXIAL} .corner.br",
    )
    assert "Fusion" in page.locator(f"{AXIAL} .corner.br").inner_text()
    assert page.locator(".mpr-view .xref").count() == 6  # geometry still from X-MPR-Geometry

    fused = _axial_rgb(page, "fusion-pet")
    coloured = np.abs(fused[..., 0] - fused[..., 2]) > 40
    assert coloured.sum() > 50, "no coloured pixels on the fused axial plane"

    page.locator("#fusion-opacity").fill("0")
    page.wait_for_function(  # opacity is the last parameter
        "[...document.querySelectorAll('.mpr-view img.image')].every(i => "
        "i.dataset.quality === 'full' && (i.dataset.src || '').endsWith('&opacity=0'))"
    )
    gray = _axial_rgb(page, "fusion-opacity-0")
    spread = gray.max(axis=2) - gray.min(axis=2)
    assert spread.max() <= 2, f"opacity 0 is not gray: max channel spread {spread.max()}"

    page.select_option("#fusion-series", fs.elsewhere)  # another frame of reference: 422
    page.wait_for_function(
        "(sel) => { const e = document.querySelector(sel); return e && !e.hidden; }",
        arg=f"{AXIAL} .vp-error",
    )
    assert "Fusion not available" in page.locator(f"{AXIAL} .vp-error").inner_text()
    page.screenshot(path=str(ARTIFACTS / "fusion-error.png"))

    page.select_option("#fusion-series", "")
    page.wait_for_function(ALL_FULL, arg="/mpr?plane=")
    assert page.locator(f"{AXIAL} .vp-error").is_hidden()
    assert "Fusion" not in page.locator(f"{AXIAL} .corner.br").inner_text()
    page.screenshot(path=str(ARTIFACTS / "fusion-none.png"))
