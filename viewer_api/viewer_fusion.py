"""PET/CT (and PET/MR) fusion for the viewer: an overlay series resampled onto a base series.

``GET …/series/{base}/fusion?overlay=<series>&plane=…`` answers the base plane or slab, windowed
as usual, with the overlay's same plane blended on top through a colour map. The overlay is
resampled onto the base grid once (patient coordinates, same frame of reference) and that
resampled volume is cached like any other.
"""

from __future__ import annotations

import math

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from mpr.display import encode
from mpr.fusion import COLOUR_MAPS, fuse, resample_onto
from mpr.reslice import orthogonal
from mpr.volume import Volume, VolumeError
from mpr.window import Window
from viewer_api.access_deps import study_access
from viewer_api.deps import ArchiveDep
from viewer_api.etag import matches, not_modified, strong_etag, validator_headers
from viewer_api.problems import HTTPProblem
from viewer_api.viewer_mpr import geometry_json, parse_mpr_request, render_plane
from viewer_api.viewer_params import SERIES, Quality, accepted_image_type
from viewer_api.viewer_volumes import VolumesDep, locate_series, not_available, series_volume

# Every route here shows images of one study: live view, in scope, audited as viewing.
router = APIRouter(dependencies=[Depends(study_access("live_view"))])


def _overlay_window(text: str | None, overlay: Volume) -> Window:
    """The overlay's window: as given, else 0 to the overlay volume's maximum.

    The whole volume, not the plane, so the colours mean the same on every plane and while
    scrolling; a strided sample keeps it cheap on a 300-slice grid.
    """
    if text:
        try:
            return Window.parse(text)
        except ValueError as exc:
            raise HTTPProblem(400, "Invalid overlay_window", str(exc)) from exc
    sample = overlay.voxels[::2, ::4, ::4]
    top = float(np.nanmax(sample)) if sample.size else 0.0
    if not math.isfinite(top) or top <= 0:
        return Window(0.5, 1.0)
    return Window(top / 2, top, "linear_exact")


@router.get(SERIES + "/fusion")
async def fusion_image(
    study: str,
    series: str,
    request: Request,
    archive: ArchiveDep,
    volumes: VolumesDep,
    overlay: str | None = None,
    plane: str | None = None,
    position: float | None = None,
    mode: str = "thin",
    thickness: float | None = None,
    window: str | None = None,
    preset: str | None = None,
    overlay_window: str | None = None,
    colour_map: str = "hot",
    opacity: float = 0.5,
    quality: Quality = 90,
) -> Response:
    """The base series' plane with the overlay series fused on it (RGB)."""
    media_type = accepted_image_type(request)
    if not overlay:
        raise HTTPProblem(400, "Missing overlay", "give overlay=<SeriesInstanceUID> to fuse")
    if colour_map not in COLOUR_MAPS:
        raise HTTPProblem(400, "Invalid colour_map", f"colour_map must be {', '.join(COLOUR_MAPS)}")
    if not (math.isfinite(opacity) and 0.0 <= opacity <= 1.0):
        raise HTTPProblem(400, "Invalid opacity", "opacity must be between 0 and 1")
    parsed = parse_mpr_request(plane, position, mode, thickness, window, preset, False, None)
    base = await run_in_threadpool(locate_series, archive, study, series)
    moving = await run_in_threadpool(locate_series, archive, study, overlay)
    parameters = {
        **parsed.key(),
        "overlay": moving.digest,
        "overlay_window": overlay_window,
        "colour_map": colour_map,
        "opacity": opacity,
        "quality": quality if media_type == "image/jpeg" else None,
    }
    etag = strong_etag(base.digest, parameters, media_type)
    if matches(request, etag):
        return not_modified(etag)

    def work() -> tuple[bytes, str, Window]:
        fixed = series_volume(archive, volumes, base)
        resampled: Volume = volumes.get_or_build(
            f"fusion:{base.key}:{moving.key}",
            lambda: resample_onto(series_volume(archive, volumes, moving), fixed),
        )
        image = render_plane(fixed, parsed)
        position_mm = image.geometry.position_mm
        overlay_plane = orthogonal(
            resampled, parsed.plane, position_mm, mode=parsed.mode, thickness_mm=parsed.thickness
        ).pixels
        chosen = _overlay_window(overlay_window, resampled)
        fused = fuse(image.display, overlay_plane, chosen, colour_map=colour_map, opacity=opacity)
        return encode(fused, media_type, quality=quality), geometry_json(image.geometry), chosen

    try:
        body, geometry, chosen = await run_in_threadpool(work)
    except VolumeError as exc:
        return not_available(str(exc))
    except ValueError as exc:  # e.g. different frames of reference
        raise HTTPProblem(422, "Fusion not available", str(exc)) from exc
    headers = {
        **validator_headers(etag),
        "X-MPR-Geometry": geometry,
        "X-Overlay-Window": ",".join(f"{v:g}" for v in (chosen.center, chosen.width)),
    }
    return Response(body, media_type=media_type, headers=headers)
