"""Frame access in mpr.pixels, checked against the real DICOM samples."""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.utils import pack_bits
from pydicom.uid import ExplicitVRLittleEndian

import mpr.pixels
from mpr import (
    PixelDecodeError,
    encapsulated_frame,
    frame_array,
    native_frame_bytes,
    number_of_frames,
    render_frame,
)

SAMPLES = (
    Path(os.environ["IMAGING_CLOUD_SAMPLES"])
    if os.environ.get("IMAGING_CLOUD_SAMPLES")
    else Path(__file__).resolve().parents[3] / "shared" / "dicom-samples"
)

TRIO = [
    "explicit_vr_little_endian",
    "implicit_vr_little_endian",
    "explicit_vr_big_endian",
    "rle_lossless",
    "jpeg_lossless_sv1_dcmtk",
    "jpeg_lossless_sv1_gdcm",
    "jpegls_lossless_gdcm",
    "jpegls_lossless_dcmtk",
    "jpeg2000_lossless",
]
CT_SLICE = "ct/philips_ingenuity_head_phantom_axial_1mm/IM0070.dcm"
US_CINE = "multiframe/us_sonosite__cine_30frames_jpeg_baseline.dcm"
XA_CINE = "multiframe/xa__coronary_cine_96frames_jpeg_baseline.dcm"
ENHANCED_MR = "multiframe/enhanced_mr__philips_b0map_64frames.dcm"


def load(relative: str) -> Dataset:
    path = SAMPLES / relative
    if not path.is_file():
        pytest.skip(
            f"DICOM sample {relative} not found under {SAMPLES} (set IMAGING_CLOUD_SAMPLES)"
        )
    return pydicom.dcmread(path)


def trio(encoding: str) -> Dataset:
    return load(f"transfer_syntaxes/mr_siemens_trio__{encoding}.dcm")


def test_number_of_frames_single_and_multi() -> None:
    assert number_of_frames(load(CT_SLICE)) == 1  # no NumberOfFrames attribute
    assert number_of_frames(load(US_CINE)) == 30


def test_number_of_frames_without_pixel_data() -> None:
    with pytest.raises(PixelDecodeError, match=r"no .*Pixel Data"):
        number_of_frames(Dataset())


def test_pixel_decode_error_is_a_value_error() -> None:
    assert issubclass(PixelDecodeError, ValueError)


@pytest.mark.parametrize("encoding", TRIO)
def test_all_trio_encodings_give_identical_native_bytes(encoding: str) -> None:
    reference = trio("explicit_vr_little_endian")
    expected = native_frame_bytes(reference, 0)
    assert len(expected) == 384 * 384 * 2
    assert native_frame_bytes(trio(encoding), 0) == expected


def test_native_bytes_match_decoded_pixels() -> None:
    ds = trio("explicit_vr_big_endian")
    assert native_frame_bytes(ds, 0) == frame_array(ds, 0).astype("<u2").tobytes()


@pytest.mark.parametrize("encoding", ["explicit_vr_little_endian", "explicit_vr_big_endian"])
def test_native_frame_bytes_does_not_decode(encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = trio(encoding)
    expected = native_frame_bytes(ds, 0)

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("native pixel data must be sliced, not decoded")

    monkeypatch.setattr(mpr.pixels, "pixel_array", no_decoding)
    assert native_frame_bytes(ds, 0) == expected


def test_native_frame_bytes_picks_the_right_frame_of_a_multiframe() -> None:
    ds = load(ENHANCED_MR)
    frame = native_frame_bytes(ds, 10)
    assert len(frame) == 64 * 64 * 2
    assert frame == frame_array(ds, 10).astype("<u2").tobytes()
    assert frame != native_frame_bytes(ds, 11)


def test_native_frame_bytes_of_single_bit_frames_not_byte_aligned() -> None:
    # 3x3 one-bit frames: frame 1 starts at bit 9, in the middle of a byte.
    frames = np.array([[[1, 0, 1], [0, 1, 0], [1, 1, 1]], [[0, 1, 1], [1, 0, 0], [0, 0, 1]]])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = 3, 3, 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(frames)
    assert native_frame_bytes(ds, 1) == pack_bits(frames[1])
    np.testing.assert_array_equal(frame_array(ds, 1), frames[1])


def test_frame_array_of_big_endian_data_is_native_order() -> None:
    arr = frame_array(trio("explicit_vr_big_endian"), 0)
    assert arr.dtype.isnative
    np.testing.assert_array_equal(arr, frame_array(trio("explicit_vr_little_endian"), 0))


def test_frame_array_of_ybr_jpeg_cine_is_rgb() -> None:
    arr = frame_array(load(US_CINE), 5)
    assert arr.shape == (240, 320, 3)
    assert arr.dtype == np.uint8


@pytest.mark.parametrize("relative", [US_CINE, XA_CINE])
def test_encapsulated_frame_is_the_jpeg_bitstream(relative: str) -> None:
    ds = load(relative)
    jpeg = encapsulated_frame(ds, 5)
    assert jpeg[:2] == b"\xff\xd8"  # JPEG SOI marker
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.size == (ds.Columns, ds.Rows)
    assert encapsulated_frame(ds, 6) != jpeg


def test_encapsulated_frame_joins_all_fragments_of_a_frame() -> None:
    ds = load("transfer_syntaxes/ct_ge__rle_multi_fragment.dcm")
    frame = encapsulated_frame(ds, 0)
    # An RLE frame starts with its 64-byte header: 2 segments for 16-bit samples,
    # the first at offset 64; and its segments must all be there.
    segments, first_offset = struct.unpack("<2L", frame[:8])
    assert (segments, first_offset) == (2, 64)
    second_offset = struct.unpack("<L", frame[8:12])[0]
    assert len(frame) > second_offset > first_offset


def test_encapsulated_frame_of_native_data_raises() -> None:
    with pytest.raises(PixelDecodeError, match="not encapsulated"):
        encapsulated_frame(load(CT_SLICE), 0)


@pytest.mark.parametrize("function", [frame_array, native_frame_bytes, encapsulated_frame])
@pytest.mark.parametrize("index", [-1, 30, 1000])
def test_frame_index_out_of_range(function: object, index: int) -> None:
    ds = load(US_CINE)
    with pytest.raises(PixelDecodeError, match="out of range"):
        function(ds, index)  # type: ignore[operator]


def test_truncated_pixel_data_raises_pixel_decode_error() -> None:
    ds = load("malformed/pydicom__MR_truncated.dcm")
    with pytest.raises(PixelDecodeError, match="truncated"):
        native_frame_bytes(ds, 0)
    with pytest.raises(PixelDecodeError, match="8130"):
        frame_array(ds, 0)


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
def test_invalid_number_of_frames_raises_pixel_decode_error() -> None:
    with pytest.raises(PixelDecodeError, match="Number of Frames"):
        frame_array(load("malformed/pydicom__badVR.dcm"), 0)


def test_missing_transfer_syntax_raises_pixel_decode_error() -> None:
    with pytest.raises(PixelDecodeError, match="Transfer Syntax"):
        frame_array(load("malformed/pydicom__meta_missing_tsyntax.dcm"), 0)


MALFORMED = sorted(p.name for p in (SAMPLES / "malformed").glob("*.dcm"))


@pytest.mark.parametrize("name", MALFORMED or ["<no samples>"])
def test_malformed_files_fail_only_with_pixel_decode_error(name: str) -> None:
    path = SAMPLES / "malformed" / name
    if not path.is_file():
        pytest.skip(f"malformed samples not found under {SAMPLES}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            pytest.skip("pydicom cannot read the file at all; nothing reaches mpr")
        for call in (frame_array, native_frame_bytes, render_frame):
            try:
                call(ds, 0)
            except PixelDecodeError:
                pass
