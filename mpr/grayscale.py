"""Grayscale display pipeline: Modality LUT -> VOI (window or VOI LUT) -> 8-bit.

The DICOM transforms are done by pydicom's own functions, but not on every pixel:
they are evaluated once over the range of stored values present in the frame, which
yields a uint8 lookup table, and the frame is then mapped with a single ``np.take``.
pydicom computes in float64 with boolean masks, which costs ~10 ms on a 512x512 frame;
a CT frame spans only a few thousand distinct values, so the table is far cheaper.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi, apply_windowing

from .window import Window, WindowFunction

__all__ = ["frame_transform_attributes", "to_display_gray"]

# Keywords of the Image Pixel, Modality LUT and VOI LUT modules that the pipeline reads.
_COPIED = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "ModalityLUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


def _overlay_functional_group(attrs: Dataset, group: Any) -> None:
    """Copy the rescale and window of one functional-group item over ``attrs``."""
    for seq_keyword in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
        seq = getattr(group, seq_keyword, None)
        if not seq:
            continue
        for elem in seq[0]:
            if elem.keyword in _COPIED:
                attrs[elem.tag] = elem


def frame_transform_attributes(ds: Dataset, index: int) -> Dataset:
    """Collect the Modality LUT and VOI attributes that apply to one frame.

    Enhanced (multi-frame) objects keep rescale and window inside the Shared and
    Per-frame Functional Groups rather than at the top level, where pydicom's
    processing functions look for them; this flattens them into one dataset.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset.
    index : int
        0-based frame index.

    Returns
    -------
    pydicom.dataset.Dataset
        A small dataset holding only the relevant attributes (elements are shared,
        not copied), with per-frame values overriding shared ones.
    """
    attrs = Dataset()
    for keyword in _COPIED:
        if keyword in ds:
            attrs[keyword] = ds[keyword]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        _overlay_functional_group(attrs, shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        _overlay_functional_group(attrs, per_frame[index])
    if hasattr(ds, "file_meta"):
        # pydicom needs the transfer syntax to read OW-encoded LUT Data.
        attrs.file_meta = ds.file_meta
    return attrs


# (0028,1056) VOI LUT Function code strings; absent means LINEAR.
_VOI_FUNCTIONS: dict[str, WindowFunction] = {
    "LINEAR": "linear",
    "LINEAR_EXACT": "linear_exact",
    "SIGMOID": "sigmoid",
}


def _first_float(value: Any) -> float:
    """First value of a possibly multi-valued DS element."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _dataset_window(attrs: Dataset) -> Window | None:
    """The first Window Center/Width of the dataset, or None if absent or invalid."""
    if attrs.get("WindowCenter") in (None, "") or attrs.get("WindowWidth") in (None, ""):
        return None
    function = _VOI_FUNCTIONS.get(str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper())
    if function is None:
        return None
    try:
        return Window(_first_float(attrs.WindowCenter), _first_float(attrs.WindowWidth), function)
    except (ValueError, TypeError, IndexError):
        # A zero width or unknown function in the header should not make the image
        # unviewable: fall back to the VOI LUT or the frame's own range.
        return None


def _window_to_8bit(values: np.ndarray, window: Window) -> np.ndarray:
    """Apply ``window`` with pydicom so that the output range is exactly 0..255."""
    # An 8-bit unsigned, unrescaled description makes apply_windowing's output range
    # (y_min, y_max) equal to (0, 255), i.e. display values directly.
    shim = Dataset()
    shim.PhotometricInterpretation = "MONOCHROME2"
    shim.BitsStored = 8
    shim.PixelRepresentation = 0
    shim.WindowCenter = window.center
    shim.WindowWidth = window.width
    shim.VOILUTFunction = window.voi_lut_function
    return apply_windowing(values, shim)


def _has_voi_lut(attrs: Dataset) -> bool:
    seq = attrs.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _pipeline(stored: np.ndarray, attrs: Dataset, window: Window | None) -> np.ndarray:
    """Map stored values to display values 0..255 (uint8), MONOCHROME1 inverted."""
    values = apply_modality_lut(stored, attrs)
    chosen = window or _dataset_window(attrs)
    out: np.ndarray
    if chosen is not None:
        out = _window_to_8bit(values, chosen)
    elif _has_voi_lut(attrs):
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)
        depth = int(attrs.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(values, attrs).astype(np.float64) * (255.0 / (2**depth - 1))
    else:
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            out = _window_to_8bit(values, Window((lo + hi) / 2, hi - lo, "linear_exact"))
        else:
            out = np.zeros(values.shape, dtype=np.float64)  # flat image: nothing to show
    result: np.ndarray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if attrs.get("PhotometricInterpretation") == "MONOCHROME1":
        # MONOCHROME1: the minimum value is displayed white.
        np.subtract(255, result, out=result)
    return result


def to_display_gray(arr: np.ndarray, attrs: Dataset, window: Window | None) -> np.ndarray:
    """Convert a grayscale frame of stored values to 8-bit display values.

    Parameters
    ----------
    arr : numpy.ndarray
        ``(rows, columns)`` stored values of one frame.
    attrs : pydicom.dataset.Dataset
        Attributes from :func:`frame_transform_attributes`.
    window : Window or None
        Explicit VOI window; if None the dataset's first window is used, else its
        VOI LUT Sequence, else the frame's min-max range.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of the same shape; MONOCHROME1 is inverted so that
        higher output is always brighter.
    """
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        return _pipeline(arr, attrs, window)
    lo, hi = int(arr.min()), int(arr.max())
    span = hi - lo + 1
    if span > max(arr.size, 1 << 16):
        # A table larger than the frame would cost more than per-pixel processing.
        return _pipeline(arr, attrs, window)
    table = _pipeline(np.arange(lo, hi + 1, dtype=np.int64), attrs, window)
    # Index = arr - lo, computed in the unsigned type of the same width: the result
    # lies in [0, span) so modular arithmetic gives the exact offset, with no upcast.
    unsigned = arr.view(f"u{arr.itemsize}")
    offsets = unsigned - unsigned.dtype.type(lo % (1 << (8 * arr.itemsize))) if lo else unsigned
    result: np.ndarray = np.take(table, offsets)
    return result
