"""Window presets (mpr.presets) and the reslice display pipeline (mpr.display)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_windowing

from mpr.display import MAX_OUTPUT_SIDE, crop_and_resize, encode, to_display
from mpr.presets import load_presets, presets, resolve_window, window_presets
from mpr.window import Window

# ---------------------------------------------------------------- presets


def test_presets_offer_the_contract_names() -> None:
    names = window_presets()
    assert list(names) == [
        "default",
        "brain",
        "lung",
        "mediastinum",
        "heart",
        "abdomen",
        "liver",
        "bone",
    ]
    assert names["default"] is None
    assert names["brain"] == Window(40, 80)
    assert names["lung"] == Window(-600, 1500)
    assert names["abdomen"] == Window(50, 400)


def test_presets_have_english_and_chinese_labels() -> None:
    labels = {p.name: p.label for p in presets()}
    assert labels["lung"] == "Lung 肺窗"
    for label in labels.values():
        assert any("\u4e00" <= ch <= "\u9fff" for ch in label), label


def test_window_presets_returns_a_copy() -> None:
    window_presets()["lung"] = Window(0, 10)
    assert window_presets()["lung"] == Window(-600, 1500)


def test_resolve_window_prefers_the_explicit_text() -> None:
    assert resolve_window("40,400", None, Window(1, 2)) == Window(40, 400)
    assert resolve_window(" -600, 1500, linear-exact ", "", None) == Window(
        -600, 1500, "linear_exact"
    )


def test_resolve_window_by_preset_name_or_alias_case_insensitive() -> None:
    assert resolve_window(None, "LUNG", None) == Window(-600, 1500)
    assert resolve_window(None, "head", None) == Window(40, 80)
    assert resolve_window(None, "chest", None) == Window(40, 400)


def test_resolve_window_default_and_absent_give_the_fallback() -> None:
    own = Window(35, 350)
    assert resolve_window(None, "default", own) == own
    assert resolve_window(None, None, own) == own
    assert resolve_window("", "  ", own) == own
    assert resolve_window(None, None, None) is None


def test_resolve_window_rejects_unknown_preset_listing_names() -> None:
    with pytest.raises(ValueError, match=r"unknown window preset 'kidney'.*lung.*bone"):
        resolve_window(None, "kidney", None)


def test_resolve_window_rejects_both_and_bad_text() -> None:
    with pytest.raises(ValueError, match="either window or preset"):
        resolve_window("40,400", "lung", None)
    with pytest.raises(ValueError, match="center,width"):
        resolve_window("40", None, None)


def test_load_presets_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="cannot be read"):
        load_presets(tmp_path / "missing.toml")
    bad = tmp_path / "p.toml"
    bad.write_text('[x]\nlabel = "X"\ncenter = 1\n', encoding="utf-8")
    with pytest.raises(ValueError, match="both center and width"):
        load_presets(bad)
    bad.write_text('[x]\nlabel = "X"\ncenter = 1\nwidth = 0\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[x\].*width"):
        load_presets(bad)
    bad.write_text('[x]\nlabel = "X"\n[y]\nlabel = "Y"\naliases = ["x"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match="used twice"):
        load_presets(bad)


# ---------------------------------------------------------------- to_display


def pydicom_display(values: np.ndarray, window: Window) -> np.ndarray:
    """Reference: pydicom's apply_windowing onto 0..255, rounded."""
    shim = Dataset()
    shim.PhotometricInterpretation = "MONOCHROME2"
    shim.BitsStored = 8
    shim.PixelRepresentation = 0
    shim.WindowCenter = window.center
    shim.WindowWidth = window.width
    shim.VOILUTFunction = window.voi_lut_function
    windowed: np.ndarray = apply_windowing(values.astype(np.float64), shim)
    rounded: np.ndarray = np.rint(windowed).astype(np.uint8)
    return rounded


WINDOWS = [
    Window(40, 400),
    Window(-600, 1500),
    Window(40.5, 80),
    Window(0, 1),
    Window(100, 37, "linear_exact"),
    Window(50, 350, "sigmoid"),
]


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_int16_matches_pydicom_exactly(window: Window) -> None:
    values = np.arange(-2048, 3072, dtype=np.int16).reshape(64, 80)
    np.testing.assert_array_equal(to_display(values, window), pydicom_display(values, window))


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_float32_matches_pydicom_within_rounding(window: Window) -> None:
    rng = np.random.default_rng(7)
    values = rng.uniform(-1100, 1500, (128, 128)).astype(np.float32)
    ours = to_display(values, window).astype(int)
    ref = pydicom_display(values, window).astype(int)
    # float32 vs float64 may only disagree on a value sitting on a .5 rounding edge.
    assert np.abs(ours - ref).max() <= 1
    assert np.mean(ours == ref) > 0.999


def test_linear_window_known_values() -> None:
    # C.11.2.1.2.1 with c = 0, w = 256: x <= -128 -> 0, x > 127 -> 255, linear between.
    values = np.array([-1000, -128, -127, 0, 126, 127, 128, 1000], dtype=np.float32)
    expected = [0, 0, 1, 128, 254, 255, 255, 255]
    assert to_display(values, Window(0, 256)).tolist() == expected
    assert to_display(values.astype(np.int16), Window(0, 256)).tolist() == expected


def test_other_dtypes_follow_the_same_maths() -> None:
    values = np.array([[0, 20, 40, 60, 80, 250]], dtype=np.uint8)
    expected = pydicom_display(values, Window(40, 80))
    for dtype in (np.uint8, np.uint16, np.int32, np.float64, np.dtype(">i2")):
        np.testing.assert_array_equal(to_display(values.astype(dtype), Window(40, 80)), expected)


def test_invert_and_monochrome1_flip_and_cancel() -> None:
    for values in (np.array([-1000, 40, 1000], np.int16), np.array([-1000.0, 40, 1000])):
        window = Window(40, 400)
        assert to_display(values, window).tolist() == [0, 128, 255]
        assert to_display(values, window, invert=True).tolist() == [255, 127, 0]
        assert to_display(values, window, monochrome1=True).tolist() == [255, 127, 0]
        both = to_display(values, window, invert=True, monochrome1=True)
        assert both.tolist() == [0, 128, 255]


def test_nan_is_shown_as_the_lowest_value() -> None:
    values = np.array([np.nan, 1000.0], dtype=np.float32)
    assert to_display(values, Window(40, 400)).tolist() == [0, 255]
    assert to_display(values, Window(40, 400), invert=True).tolist() == [255, 0]


# ---------------------------------------------------------------- encode


def gradient(rows: int = 48, cols: int = 64) -> np.ndarray:
    return (np.add.outer(np.arange(rows), np.arange(cols)) * 2 % 256).astype(np.uint8)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_round_trip_is_lossless_gray_and_rgb() -> None:
    gray = gradient()
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    for image, mode in ((gray, "L"), (rgb, "RGB")):
        decoded = decode(encode(image, "image/png"))
        assert decoded.format == "PNG" and decoded.mode == mode
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_jpeg_decodes_to_the_right_size_and_mode() -> None:
    gray = gradient()
    decoded = decode(encode(gray, "IMAGE/JPEG", quality=95))
    assert decoded.format == "JPEG" and decoded.mode == "L" and decoded.size == (64, 48)
    assert np.abs(np.asarray(decoded).astype(int) - gray).mean() < 3
    rgb = np.stack([gray, gray, gray], axis=-1)
    decoded = decode(encode(rgb, "image/jpeg"))
    assert decoded.mode == "RGB" and decoded.size == (64, 48)


def test_lower_jpeg_quality_is_smaller() -> None:
    noisy = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    assert len(encode(noisy, "image/jpeg", quality=20)) < len(encode(noisy, "image/jpeg"))


@pytest.mark.parametrize(
    ("image", "media_type", "quality", "message"),
    [
        (gradient(), "image/gif", 90, "unsupported media type"),
        (gradient(), "image/jpeg", 0, "quality"),
        (gradient(), "image/jpeg", 101, "quality"),
        (gradient(), "image/jpeg", True, "quality"),
        (gradient().astype(np.int16), "image/png", 90, "uint8"),
        (np.zeros((4, 4, 4), np.uint8), "image/png", 90, "shape"),
    ],
)
def test_encode_rejects_bad_input(
    image: np.ndarray, media_type: str, quality: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode(image, media_type, quality=quality)


# ---------------------------------------------------------------- crop_and_resize


def test_no_region_no_size_is_an_identical_copy() -> None:
    image = gradient()
    out = crop_and_resize(image, None, None)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_region_without_size_is_the_exact_pixels() -> None:
    image = gradient(100, 200)
    out = crop_and_resize(image, (0.25, 0.1, 0.75, 0.5), None)
    np.testing.assert_array_equal(out, image[10:50, 50:150])


def test_tiny_region_keeps_at_least_one_pixel() -> None:
    image = gradient(10, 10)
    assert crop_and_resize(image, (0.99, 0.99, 1.0, 1.0), None).shape == (1, 1)


@pytest.mark.parametrize(
    ("shape", "region", "size", "expected_hw"),
    [
        ((256, 512), None, (100, 100), (50, 100)),  # wide image into a square: width-bound
        ((512, 256), None, (100, 100), (100, 50)),  # tall image: height-bound
        ((512, 512), None, (300, 200), (200, 200)),
        ((64, 64), None, (256, 512), (256, 256)),  # enlarged up to the box
        ((512, 512), (0.0, 0.0, 0.5, 0.25), (400, 400), (200, 400)),  # region's aspect 2:1
        ((512, 512, 3), None, (128, 128), (128, 128)),
    ],
)
def test_size_fits_the_box_keeping_aspect(
    shape: tuple[int, ...],
    region: tuple[float, float, float, float] | None,
    size: tuple[int, int],
    expected_hw: tuple[int, int],
) -> None:
    image = np.zeros(shape, np.uint8)
    out = crop_and_resize(image, region, size)
    assert out.shape == (*expected_hw, *shape[2:]) and out.dtype == np.uint8


def test_region_with_size_samples_the_region() -> None:
    image = np.zeros((100, 100), np.uint8)
    image[:, 50:] = 200  # right half bright
    right = crop_and_resize(image, (0.5, 0.0, 1.0, 1.0), (64, 64))
    left = crop_and_resize(image, (0.0, 0.0, 0.5, 1.0), (64, 64))
    assert right.shape == (64, 32)  # 50 x 100 px region into a 64 x 64 box
    # Resampling sees the image around the box (as a zoomed viewport would), so only
    # the edge column next to the cut is blended with the other half.
    assert (right[:, 2:] == 200).all() and (left[:, :-2] == 0).all()


@pytest.mark.parametrize(
    "region",
    [
        (0.5, 0.0, 0.5, 1.0),
        (0.0, 0.6, 1.0, 0.5),
        (-0.1, 0.0, 1.0, 1.0),
        (0.0, 0.0, 1.1, 1.0),
        (0.0, 0.0, float("nan"), 1.0),
        (0.0, 0.0, 1.0),
    ],
)
def test_bad_region_is_rejected(region: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="region"):
        crop_and_resize(gradient(), region, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "size", [(0, 10), (10, -1), (True, 10), (10.5, 10), (MAX_OUTPUT_SIDE + 1, 10), (10,)]
)
def test_bad_size_is_rejected(size: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="size"):
        crop_and_resize(gradient(), None, size)  # type: ignore[arg-type]
