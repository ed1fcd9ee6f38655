"""The requester's watermark burned into shared or exported renderings (mpr.watermark)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

import mpr.watermark as watermark
from mpr.watermark import FONT_CANDIDATES, burn_watermark

TEXT = "张医生 dr.zhang · 2026-05-01 · 教学 teaching"


def _changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    a, b = np.asarray(before).astype(np.float64), np.asarray(after).astype(np.float64)
    diff = np.abs(a - b)
    return diff.max(axis=-1) > 0 if diff.ndim == 3 else diff > 0


@pytest.fixture
def fresh_caches() -> Iterator[None]:
    watermark.watermark_font.cache_clear()
    watermark._text_layer.cache_clear()
    yield
    watermark.watermark_font.cache_clear()
    watermark._text_layer.cache_clear()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "F"])
@pytest.mark.parametrize("background", ["black", "white"])
def test_visible_on_dark_and_bright_images(mode: str, background: str) -> None:
    image = Image.new("RGB", (512, 384), background).convert(mode)

    marked = burn_watermark(image, TEXT)

    assert (marked.mode, marked.size) == (image.mode, image.size)
    assert _changed(image, marked).mean() > 0.05
    if mode in ("I;16", "F"):
        return
    luminance = np.asarray(marked.convert("RGB").convert("L"))
    if background == "black":  # the light fill shows on black ...
        assert (luminance > 100).mean() > 0.02
    else:  # ... the dark outline on white
        assert (luminance < 155).mean() > 0.02


@pytest.mark.parametrize("size", [(32, 32), (33, 500), (1000, 40), (1760, 2140)])
def test_any_size_from_32_pixels(size: tuple[int, int]) -> None:
    image = Image.new("L", size, 0)
    marked = burn_watermark(image, TEXT)
    assert marked.size == size
    assert _changed(image, marked).mean() > 0.02


def test_the_input_image_is_left_alone() -> None:
    image = Image.new("RGB", (128, 128), (40, 80, 120))
    before = image.tobytes()
    marked = burn_watermark(image, "someone")
    assert image.tobytes() == before
    assert marked is not image


def test_a_grey_study_stays_readable_under_the_mark() -> None:
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    image = Image.fromarray(ramp)
    marked = np.asarray(burn_watermark(image, TEXT)).astype(int)
    # Semi-transparent: no pixel is pushed further than halfway to black or white.
    assert np.abs(marked - ramp.astype(int)).max() <= 130


def test_chinese_names_are_drawn_as_glyphs() -> None:
    if not any(p.is_file() for p in FONT_CANDIDATES):
        pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei)")
    image = Image.new("L", (256, 256), 0)
    # Missing glyphs would all be the same box, so two names would render alike.
    zhang = np.asarray(burn_watermark(image, "张三"))
    li = np.asarray(burn_watermark(image, "李四"))
    assert (zhang != li).mean() > 0.01


def test_without_a_cjk_font_falls_back_to_pillows_font(
    monkeypatch: pytest.MonkeyPatch, fresh_caches: None
) -> None:
    monkeypatch.setattr(watermark, "FONT_CANDIDATES", ())
    image = Image.new("L", (200, 200), 255)
    marked = burn_watermark(image, "张三 dr.zhang")
    assert _changed(image, marked).mean() > 0.02


def test_too_small_an_image_is_enlarged_and_still_marked() -> None:
    image = Image.new("L", (16, 16), 0)
    marked = burn_watermark(image, "share link 7")
    assert min(marked.size) >= 64 and marked.mode == "L"
    assert np.asarray(marked).max() > 0
