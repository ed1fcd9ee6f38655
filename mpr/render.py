"""Rendered (consumer-format) images of a frame: JPEG or PNG, windowed and scaled.

This is what DICOMweb ``/rendered`` and ``/thumbnail`` resources return.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from .display import encode
from .grayscale import frame_transform_attributes, to_display_gray
from .pixels import PixelDecodeError, frame_array
from .watermark import burn_watermark
from .window import Window

__all__ = ["SUPPORTED_MEDIA_TYPES", "render_frame", "thumbnail"]

SUPPORTED_MEDIA_TYPES = ("image/jpeg", "image/png")

_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}

# zlib level 1 is ~3x faster than Pillow's default 6 for ~10% larger files; rendered
# frames are produced per request and rarely cached, so CPU wins over bytes.


def _normalise_media_type(media_type: str) -> str:
    key = media_type.strip().lower()
    if key not in _PIL_FORMATS:
        raise ValueError(
            f"unsupported media type {media_type!r}; supported: {', '.join(SUPPORTED_MEDIA_TYPES)}"
        )
    return key


def _colour_to_8bit(arr: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """RGB uint8 from an RGB frame or the palette indices of a PALETTE COLOR frame."""
    if arr.ndim == 2:
        try:
            # PALETTE COLOR: indices -> RGB through the (possibly segmented) palette.
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:  # missing/ill-formed palette descriptors or data
            raise PixelDecodeError(f"cannot apply the PALETTE COLOR lookup table: {exc}") from exc
        bits = 8 * rgb.dtype.itemsize
    else:
        rgb = arr
        bits = 8 if arr.dtype.itemsize == 1 else int(ds.get("BitsStored") or 8 * arr.itemsize)
    if window is not None:
        # Windowing colour is outside the standard pipeline but clients ask for it
        # (e.g. to brighten ultrasound); apply it per channel in stored units.
        return to_display_gray(rgb, Dataset(), window)
    if bits <= 8:
        as_bytes: np.ndarray = rgb.astype(np.uint8, copy=False)
        return as_bytes
    # Keep the most significant 8 bits; clip in case bits above Bits Stored are set.
    shifted: np.ndarray = np.minimum(np.right_shift(rgb, bits - 8), 255).astype(np.uint8)
    return shifted


def _fit(size: tuple[int, int], viewport: tuple[int, int]) -> tuple[int, int]:
    """Largest (width, height) with the aspect ratio of ``size`` inside ``viewport``."""
    width, height = size
    scale = min(viewport[0] / width, viewport[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render_frame(
    ds: Dataset,
    index: int = 0,
    *,
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
    media_type: str = "image/jpeg",
    quality: int = 90,
    watermark: str | None = None,
) -> bytes:
    """Render one frame as an 8-bit JPEG or PNG image.

    Grayscale frames go through the Modality LUT (rescale or LUT), then the VOI
    transform: ``window`` if given, else the dataset's first Window Center/Width, else
    its VOI LUT Sequence, else the frame's min-max range; MONOCHROME1 is inverted.
    Enhanced multi-frame objects take rescale and window from the functional groups.
    Colour frames (RGB, YBR, PALETTE COLOR) are output as RGB, windowed only if
    ``window`` is given.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset, read with its file meta information.
    index : int, optional
        0-based frame index.
    window : Window or None, optional
        Explicit VOI window in modality units.
    viewport : (int, int) or None, optional
        ``(columns, rows)`` box to scale the image into, keeping the aspect ratio
        (up or down).
    media_type : str, optional
        One of :data:`SUPPORTED_MEDIA_TYPES`.
    quality : int, optional
        JPEG quality 1-100; ignored for PNG.
    watermark : str or None, optional
        Text burned visibly into the image (shared and exported images say whose they are).

    Returns
    -------
    bytes
        The encoded image.

    Raises
    ------
    ValueError
        For an unsupported media type, quality outside 1-100 or a non-positive viewport.
    PixelDecodeError
        If the frame cannot be decoded (a ``ValueError`` subclass).
    """
    key = _normalise_media_type(media_type)
    if isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality!r}")
    if viewport is not None and (len(viewport) != 2 or min(viewport) < 1):
        raise ValueError(f"viewport must be two positive integers (columns, rows), got {viewport}")

    arr = frame_array(ds, index)
    if arr.ndim == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        display = _colour_to_8bit(arr, ds, window)
    else:
        display = to_display_gray(arr, frame_transform_attributes(ds, index), window)

    if viewport is not None:
        image = Image.fromarray(np.ascontiguousarray(display))
        target = _fit(image.size, (int(viewport[0]), int(viewport[1])))
        if target != image.size:
            shrinking = target[0] < image.size[0]
            image = image.resize(
                target,
                Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC,
                # Pre-reduce by whole factors first: much faster for big shrinks at
                # no visible cost.
                reducing_gap=3.0 if shrinking else None,
            )
            display = np.asarray(image)
    if watermark:
        display = np.asarray(
            burn_watermark(Image.fromarray(np.ascontiguousarray(display)), watermark)
        )
    # One encoder for every image the server sends: JPEG by libjpeg-turbo (simplejpeg),
    # PNG by Pillow with a fast lossless strategy (see mpr.display.encode).
    return encode(np.ascontiguousarray(display), key, quality=quality)


def thumbnail(
    ds: Dataset,
    index: int = 0,
    *,
    size: int = 128,
    media_type: str = "image/jpeg",
    watermark: str | None = None,
) -> bytes:
    """Render a frame fitted into a ``size`` x ``size`` square.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The image dataset.
    index : int, optional
        0-based frame index.
    size : int, optional
        Edge of the bounding square in pixels; the longer image side gets this length.
    media_type : str, optional
        One of :data:`SUPPORTED_MEDIA_TYPES`.

    Returns
    -------
    bytes
        The encoded image.

    Raises
    ------
    ValueError
        For a non-positive size or an unsupported media type.
    PixelDecodeError
        If the frame cannot be decoded.
    """
    if isinstance(size, bool) or size < 1:
        raise ValueError(f"thumbnail size must be a positive integer, got {size!r}")
    return render_frame(
        ds, index, viewport=(size, size), media_type=media_type, watermark=watermark
    )
