"""Rendered JPEG/PNG output of mpr.render and window parsing of mpr.window."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from mpr import (
    SUPPORTED_MEDIA_TYPES,
    PixelDecodeError,
    Window,
    frame_array,
    render_frame,
    thumbnail,
)

SAMPLES = (
    Path(os.environ["IMAGING_CLOUD_SAMPLES"])
    if os.environ.get("IMAGING_CLOUD_SAMPLES")
    else Path(__file__).resolve().parents[3] / "shared" / "dicom-samples"
)
CT_SLICE = "ct/philips_ingenuity_head_phantom_axial_1mm/IM0070.dcm"  # header window 40/80
US_CINE = "multiframe/us_sonosite__cine_30frames_jpeg_baseline.dcm"  # 320x240 YBR JPEG
CR_PORTRAIT = "transfer_syntaxes/cr_fuji__jpeg_extended_12bit.dcm"  # 1760 wide, 2140 high
ENHANCED_CT = "multiframe/enhanced_ct__nema_2frames.dcm"  # window in functional groups


def load(relative: str) -> Dataset:
    path = SAMPLES / relative
    if not path.is_file():
        pytest.skip(
            f"DICOM sample {relative} not found under {SAMPLES} (set IMAGING_CLOUD_SAMPLES)"
        )
    return pydicom.dcmread(path)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode(data))


def synthetic(stored: np.ndarray, photometric: str = "MONOCHROME2") -> Dataset:
    """A minimal single-frame image with the given stored values (uint8 or uint16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = stored.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = stored.astype(f"<u{stored.dtype.itemsize}").tobytes()
    return ds


GRADIENT = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 8 rows x 256 columns


# --- Window.parse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("40,80", Window(40.0, 80.0, "linear")),
        (" -600 , 1500 ", Window(-600.0, 1500.0)),
        ("40,80,linear", Window(40.0, 80.0, "linear")),
        ("40,0.5,LINEAR-EXACT", Window(40.0, 0.5, "linear_exact")),
        ("40,0.5,linear_exact", Window(40.0, 0.5, "linear_exact")),
        ("1e3,2e3,sigmoid", Window(1000.0, 2000.0, "sigmoid")),
    ],
)
def test_window_parse(text: str, expected: Window) -> None:
    assert Window.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "center,width"),
        ("40", "center,width"),
        ("40,80,linear,extra", "center,width"),
        ("40,,linear", "center,width"),
        ("level,80", "must be numbers"),
        ("40,wide", "must be numbers"),
        ("nan,80", "finite"),
        ("40,inf", "finite"),
        ("40,0", "width must be"),
        ("40,-10,sigmoid", "width must be > 0"),
        ("40,0.5", ">= 1 for linear"),
        ("40,80,gamma", "unknown window function"),
    ],
)
def test_window_parse_rejects_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Window.parse(text)


# --- grayscale rendering -------------------------------------------------------------


def test_ct_brain_window_shows_air_black_and_phantom_bright() -> None:
    ds = load(CT_SLICE)
    image = pixels(render_frame(ds, window=Window(40, 80), media_type="image/png"))
    assert image.shape == (512, 512)
    for corner in (image[:20, :20], image[:20, -20:], image[-20:, :20], image[-20:, -20:]):
        assert corner.max() == 0  # air around the head
    # The phantom is a plastic shell with inserts, filled with air: judge by HU.
    hu = frame_array(ds, 0) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert (image[hu < -100] == 0).all()  # all air, inside and out, is black
    plastic = hu > 150
    assert plastic.sum() > 5000  # the shell and inserts are a sizeable part of the slice
    assert (image[plastic] == 255).mean() > 0.99  # and they are at full brightness


def test_default_window_comes_from_the_header() -> None:
    ds = load(CT_SLICE)
    header = render_frame(ds, media_type="image/png")
    assert header == render_frame(ds, window=Window(40, 80), media_type="image/png")
    assert header != render_frame(ds, window=Window(0, 3000), media_type="image/png")


def test_enhanced_ct_window_comes_from_the_functional_groups() -> None:
    ds = load(ENHANCED_CT)
    rendered = render_frame(ds, 1, media_type="image/png")
    assert rendered == render_frame(ds, 1, window=Window(49, 102), media_type="image/png")


def test_without_window_the_frame_range_is_stretched() -> None:
    image = pixels(render_frame(synthetic(GRADIENT + 1000), media_type="image/png"))
    assert image.min() == 0
    assert image.max() == 255
    assert (np.diff(image[0].astype(int)) >= 0).all()  # monotonic, brighter to the right


def test_monochrome1_is_inverted_relative_to_monochrome2() -> None:
    for window in (None, Window(2048, 4096)):
        mono2 = pixels(render_frame(synthetic(GRADIENT), window=window, media_type="image/png"))
        mono1 = pixels(
            render_frame(synthetic(GRADIENT, "MONOCHROME1"), window=window, media_type="image/png")
        )
        np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))
        assert mono1[0, 0] == 255  # lowest stored value is white in MONOCHROME1


def test_voi_lut_sequence_is_applied() -> None:
    ds = synthetic(np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # an inverting VOI LUT
    ds.VOILUTSequence = Sequence([item])
    image = pixels(render_frame(ds, media_type="image/png"))
    np.testing.assert_array_equal(image[0], np.arange(255, -1, -1))


# --- colour ------------------------------------------------------------------------


def test_ultrasound_cine_frame_renders_in_colour() -> None:
    image = decode(render_frame(load(US_CINE), 5))
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (320, 240)
    rgb = np.asarray(image).astype(int)
    # Somewhere the channels differ, i.e. it was not flattened to gray.
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])).max() > 30


def test_colour_is_windowed_only_on_request() -> None:
    ds = load(US_CINE)
    plain = render_frame(ds, 5, media_type="image/png")
    assert render_frame(ds, 5, window=Window(60, 100), media_type="image/png") != plain
    assert (pixels(render_frame(ds, 5, window=Window(20, 40), media_type="image/png")) > 0).any()


def test_palette_colour_is_rendered_through_its_palette() -> None:
    ds = synthetic(np.tile(np.arange(256, dtype=np.uint8), (4, 1)), "PALETTE COLOR")
    ramp = (np.arange(256, dtype=np.uint16) * 257).astype("<u2").tobytes()
    zeros = bytes(512)
    for colour, data in (("Red", ramp), ("Green", zeros), ("Blue", zeros)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", data)
    image = pixels(render_frame(ds, media_type="image/png"))
    assert image.shape == (4, 256, 3)
    np.testing.assert_array_equal(image[0, :, 0], np.arange(256))
    assert image[..., 1:].max() == 0


# --- sizes and formats ---------------------------------------------------------------


@pytest.mark.parametrize("media_type", SUPPORTED_MEDIA_TYPES)
def test_output_decodes_with_the_expected_format_and_size(media_type: str) -> None:
    image = decode(render_frame(load(CT_SLICE), media_type=media_type))
    assert Image.MIME[image.format] == media_type  # type: ignore[index]
    assert image.size == (512, 512)
    assert image.mode == "L"


@pytest.mark.parametrize(
    ("viewport", "expected"),
    [((100, 100), (100, 75)), ((1000, 120), (160, 120)), ((640, 480), (640, 480))],
)
def test_viewport_keeps_the_aspect_ratio(
    viewport: tuple[int, int], expected: tuple[int, int]
) -> None:
    image = decode(render_frame(load(US_CINE), 0, viewport=viewport, media_type="image/png"))
    assert image.size == expected


def test_thumbnail_fits_a_portrait_image_into_the_square() -> None:
    image = decode(thumbnail(load(CR_PORTRAIT), size=128))
    assert image.size == (105, 128)  # 1760 x 2140 scaled by 128/2140


def test_jpeg_quality_changes_the_size() -> None:
    ds = load(CT_SLICE)
    window = Window(0, 2000)
    assert len(render_frame(ds, window=window, quality=20)) < len(
        render_frame(ds, window=window, quality=95)
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"media_type": "image/gif"},
        {"media_type": "application/dicom"},
        {"quality": 0},
        {"quality": 101},
        {"viewport": (0, 100)},
    ],
)
def test_bad_render_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_frame(load(CT_SLICE), **kwargs)  # type: ignore[arg-type]


def test_thumbnail_rejects_a_zero_size() -> None:
    with pytest.raises(ValueError, match="size"):
        thumbnail(load(CT_SLICE), size=0)


def test_render_errors_are_pixel_decode_errors() -> None:
    with pytest.raises(PixelDecodeError, match="out of range"):
        render_frame(load(US_CINE), 30)
    with pytest.raises(PixelDecodeError):
        render_frame(load("malformed/pydicom__MR_truncated.dcm"))
