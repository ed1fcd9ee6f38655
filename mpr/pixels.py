"""Access to the frames of a DICOM image: decoded arrays, raw bytes, compressed bitstreams."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID

__all__ = [
    "PixelDecodeError",
    "encapsulated_frame",
    "frame_array",
    "native_frame_bytes",
    "number_of_frames",
]


class PixelDecodeError(ValueError):
    """The pixel data, or the requested frame of it, cannot be decoded."""


def _int_attr(ds: Dataset, keyword: str) -> int:
    """Return a required integer attribute, or raise PixelDecodeError naming it."""
    value: Any = ds.get(keyword)
    if value is None or value == "":
        raise PixelDecodeError(f"missing required attribute {keyword}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PixelDecodeError(f"invalid {keyword} value {value!r}") from None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if not tsuid:
        raise PixelDecodeError("no (0002,0010) Transfer Syntax UID in the file meta information")
    uid = UID(str(tsuid))
    if not uid.is_transfer_syntax:
        raise PixelDecodeError(f"unknown transfer syntax {uid}")
    return uid


def number_of_frames(ds: Dataset) -> int:
    """Return the number of frames in the Pixel Data.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset.

    Returns
    -------
    int
        (0028,0008) Number of Frames, or 1 when it is absent, empty or 0 (a common
        non-conformance that pydicom also reads as a single frame).

    Raises
    ------
    PixelDecodeError
        If there is no (or empty) Pixel Data, or Number of Frames is not an integer.
    """
    # A truncated or mis-parsed file can keep the element but lose its value.
    if "PixelData" not in ds:
        raise PixelDecodeError("the dataset has no (7FE0,0010) Pixel Data")
    if not ds.PixelData:
        raise PixelDecodeError("the (7FE0,0010) Pixel Data element is empty")
    value: Any = ds.get("NumberOfFrames")
    if value is None or value == "":
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        raise PixelDecodeError(f"invalid (0028,0008) Number of Frames value {value!r}") from None
    if frames < 0:
        raise PixelDecodeError(f"negative (0028,0008) Number of Frames {frames}")
    return frames or 1


def _check_index(ds: Dataset, index: int) -> int:
    """Validate a 0-based frame index and return the number of frames."""
    frames = number_of_frames(ds)
    # bool is an int subclass; True as a frame number is almost certainly a bug.
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise PixelDecodeError(f"frame index must be an integer, got {index!r}")
    if not 0 <= index < frames:
        raise PixelDecodeError(f"frame index {index} out of range: the image has {frames} frame(s)")
    return frames


def frame_array(ds: Dataset, index: int) -> np.ndarray:
    """Decode one frame to an array of stored values.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset, read with its file meta information.
    index : int
        0-based frame index.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` for single-sample images (PALETTE COLOR images give the
        palette indices), ``(rows, columns, 3)`` RGB for YBR/RGB images; native byte
        order. No Modality or VOI LUT is applied.

    Raises
    ------
    PixelDecodeError
        If the dataset has no pixel data, the index is out of range or decoding fails.
    """
    frames = _check_index(ds, index)
    tsuid = _transfer_syntax(ds)
    try:
        # index= makes pydicom decode only this frame, not the whole multi-frame cine;
        # the default as_rgb=True turns YBR (e.g. JPEG baseline YBR_FULL_422) into RGB.
        arr = pixel_array(ds, index=int(index))
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        raise PixelDecodeError(
            f"cannot decode frame {index} of {frames} ({tsuid.name}): {exc}"
        ) from exc
    if not arr.dtype.isnative:
        # Big-endian transfer syntax: downstream numpy/Pillow code wants native order.
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _frame_bits(ds: Dataset) -> int:
    """Size of one stored frame in bits, as laid out in native Pixel Data."""
    rows = _int_attr(ds, "Rows")
    cols = _int_attr(ds, "Columns")
    samples = _int_attr(ds, "SamplesPerPixel")
    bits = _int_attr(ds, "BitsAllocated")
    if rows <= 0 or cols <= 0 or samples <= 0 or bits not in (1, 8, 16, 32, 64):
        raise PixelDecodeError(
            f"unsupported image geometry: Rows={rows} Columns={cols} "
            f"SamplesPerPixel={samples} BitsAllocated={bits}"
        )
    size = rows * cols * samples * bits
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        # Native 4:2:2 stores two luma samples per chroma pair: 2 samples/pixel, not 3.
        size = size // 3 * 2
    return size


def native_frame_bytes(ds: Dataset, index: int) -> bytes:
    """Return one frame as uncompressed little-endian bytes.

    This is the ``application/octet-stream`` body of a WADO-RS frame request. Native
    (uncompressed) Pixel Data is sliced, never decoded; big-endian data is byte-swapped.
    Encapsulated frames are decoded; colour JPEG frames therefore come back as
    interleaved RGB, as a decompressing converter would write them.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset, read with its file meta information.
    index : int
        0-based frame index.

    Returns
    -------
    bytes
        The frame's pixel bytes. Single-bit data is repacked so the frame starts on a
        byte boundary.

    Raises
    ------
    PixelDecodeError
        If the dataset has no pixel data, the index is out of range, the Pixel Data is
        shorter than the frame needs, or decoding fails.
    """
    frames = _check_index(ds, index)
    tsuid = _transfer_syntax(ds)
    if tsuid.is_encapsulated:
        arr = frame_array(ds, index)
        if _int_attr(ds, "BitsAllocated") == 1:
            return pack_bits(arr)  # keep the native 1-bit layout
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()

    bits = _int_attr(ds, "BitsAllocated")
    frame_bits = _frame_bits(ds)
    data: bytes = ds.PixelData
    start_bit = index * frame_bits
    end = (start_bit + frame_bits + 7) // 8
    if len(data) < end:
        raise PixelDecodeError(
            f"Pixel Data is truncated: frame {index} of {frames} needs bytes up to {end}, "
            f"but only {len(data)} are present"
        )
    if bits == 1 and start_bit % 8:
        # Bit-packed frames may start mid-byte; let pydicom unpack and repack it.
        return pack_bits(frame_array(ds, index))
    chunk = data[start_bit // 8 : end]
    if tsuid.is_little_endian:
        return bytes(chunk)
    # Explicit VR Big Endian: swap each value; 8-bit data stored as OW was written as
    # 16-bit words, so it swaps pairwise like pydicom does.
    vr = ds["PixelData"].VR
    width = bits // 8 if bits > 8 else (2 if bits == 8 and vr == "OW" else 1)
    if width == 1:
        return bytes(chunk)
    if len(chunk) % width:
        raise PixelDecodeError(f"frame length {len(chunk)} is not a multiple of {width} bytes")
    return np.frombuffer(chunk, dtype=f"u{width}").byteswap().tobytes()


def encapsulated_frame(ds: Dataset, index: int) -> bytes:
    """Return the compressed bitstream of one frame, unchanged.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset with an encapsulated (compressed) transfer syntax.
    index : int
        0-based frame index.

    Returns
    -------
    bytes
        The frame's fragments joined, as stored (e.g. a JPEG starting with FF D8).

    Raises
    ------
    PixelDecodeError
        If the transfer syntax is native, the index is out of range or the
        encapsulation (Basic/Extended Offset Table, fragments) is broken.
    """
    frames = _check_index(ds, index)
    tsuid = _transfer_syntax(ds)
    if not tsuid.is_encapsulated:
        raise PixelDecodeError(
            f"transfer syntax {tsuid.name} ({tsuid}) is not encapsulated; "
            "there is no compressed frame to pass through"
        )
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        return get_frame(ds.PixelData, index, number_of_frames=frames, extended_offsets=offsets)
    except Exception as exc:  # malformed item tags, offsets past the end, ...
        raise PixelDecodeError(
            f"cannot extract frame {index} of {frames} from the encapsulated Pixel Data: {exc}"
        ) from exc
