"""Rendered frames of stored instances for the viewer: VOI, invert, region, size, JPEG/PNG.

Every image answers a strong ETag over its SOP Instance UID and every parameter (the parsed
values, so equivalent spellings share a cache entry); ``If-None-Match`` is answered 304
before any pixel is read.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut

from cloud.archive import Archive
from cloud.errors import InstanceNotFoundError, InvalidDatasetError
from mpr.display import crop_and_resize, encode
from mpr.grayscale import frame_transform_attributes, to_display_gray
from mpr.pixels import PixelDecodeError, frame_array, number_of_frames
from mpr.render import render_frame
from mpr.watermark import burn_watermark
from mpr.window import Window
from viewer_api.access_deps import study_access, watermark_text
from viewer_api.deps import ArchiveDep
from viewer_api.etag import instances_digest, matches, not_modified, strong_etag, validator_headers
from viewer_api.viewer_params import (
    SERIES,
    Quality,
    accepted_image_type,
    explicit_window,
    parse_region,
    parse_size,
    window_header,
    window_key,
)

# Every route here shows images of one study: live view, in scope, audited as viewing.
router = APIRouter(dependencies=[Depends(study_access("live_view"))])


def _header_window(attrs: Dataset) -> Window | None:
    """The frame's own first Window Center/Width, or None if absent or unusable."""

    def first(value: Any) -> float:
        return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)

    functions = {"LINEAR": "linear", "LINEAR_EXACT": "linear_exact", "SIGMOID": "sigmoid"}
    function = functions.get(str(attrs.get("VOILUTFunction") or "LINEAR").strip().upper())
    try:
        return Window(first(attrs.WindowCenter), first(attrs.WindowWidth), function)  # type: ignore[arg-type]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _has_voi_lut(attrs: Dataset) -> bool:
    seq = attrs.get("VOILUTSequence")
    return bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]


def _gray_frame(
    ds: Dataset, index: int, explicit: Window | None
) -> tuple[np.ndarray, Window | None]:
    """8-bit display values of a grayscale frame and the window applied (None: a VOI LUT)."""
    stored = frame_array(ds, index)
    attrs = frame_transform_attributes(ds, index)
    window = explicit or _header_window(attrs)
    if window is None and not _has_voi_lut(attrs):
        values = apply_modality_lut(stored, attrs)
        low, high = float(np.min(values)), float(np.max(values))
        if high > low:  # the frame's own range, as mpr.grayscale does without a window
            window = Window((low + high) / 2, high - low, "linear_exact")
    return to_display_gray(stored, attrs, window), window


def _colour_frame(ds: Dataset, index: int, explicit: Window | None) -> np.ndarray:
    """8-bit RGB of a colour frame, through the DICOMweb renderer (palette, YBR, depth)."""
    png = render_frame(ds, index, window=explicit, media_type="image/png")
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def _render_stored_frame(
    ds: Dataset,
    index: int,
    *,
    explicit: Window | None,
    invert: bool,
    region: tuple[float, float, float, float] | None,
    size: tuple[int, int] | None,
    media_type: str,
    quality: int,
    watermark: str | None = None,
) -> tuple[bytes, Window | None]:
    try:
        colour = ds.get("SamplesPerPixel", 1) != 1 or ds.get("PhotometricInterpretation") in (
            "PALETTE COLOR",
        )
        if colour:
            display, window = _colour_frame(ds, index, explicit), explicit
        else:
            display, window = _gray_frame(ds, index, explicit)
    except PixelDecodeError as exc:
        raise InvalidDatasetError(f"cannot render: {exc}") from exc
    if invert:
        display = np.subtract(255, display, dtype=np.uint8)
    display = crop_and_resize(display, region, size) if region or size else display
    if watermark:
        display = np.asarray(burn_watermark(Image.fromarray(display), watermark))
    return encode(display, media_type, quality=quality), window


def _read_instance(archive: Archive, study: str, series: str, sop: str, frame: int) -> Dataset:
    ds = archive.read_dataset(archive.locate(study, series, sop)[0])
    try:
        frames = number_of_frames(ds)
    except PixelDecodeError as exc:
        raise InstanceNotFoundError(f"instance has no frames: {exc}") from exc
    if frame > frames:
        raise InstanceNotFoundError(f"frame {frame} does not exist; the instance has {frames}")
    return ds


@router.get(SERIES + "/instances/{sop}/frames/{n}/rendered")
async def rendered_frame(
    study: str,
    series: str,
    sop: str,
    n: Annotated[int, Path(ge=1, description="1-based frame number")],
    request: Request,
    archive: ArchiveDep,
    window: str | None = None,
    preset: str | None = None,
    invert: bool = False,
    region: str | None = None,
    size: str | None = None,
    quality: Quality = 90,
) -> Response:
    """A frame as JPEG (default) or lossless PNG after VOI; ``X-Window`` is the window applied."""
    media_type = accepted_image_type(request)
    explicit = explicit_window(window, preset)
    parsed_region, parsed_size = parse_region(region), parse_size(size)
    parameters = {
        "frame": n,
        "window": window_key(explicit),
        "invert": invert,
        "region": parsed_region,
        "size": parsed_size,
        "quality": quality if media_type == "image/jpeg" else None,
        "watermark": (mark := watermark_text(request)),
    }
    etag = strong_etag(instances_digest([sop]), parameters, media_type)
    if matches(request, etag):
        await run_in_threadpool(archive.locate, study, series, sop)  # 404 before 304
        return not_modified(etag)

    # The common case, a new image: one worker hop and one index lookup (in _read_instance).
    def work() -> tuple[bytes, Window | None]:
        ds = _read_instance(archive, study, series, sop, n)
        return _render_stored_frame(
            ds,
            n - 1,
            explicit=explicit,
            invert=invert,
            region=parsed_region,
            size=parsed_size,
            media_type=media_type,
            quality=quality,
            watermark=mark,
        )

    body, applied = await run_in_threadpool(work)
    headers = {**validator_headers(etag), **window_header(applied)}
    return Response(body, media_type=media_type, headers=headers)
