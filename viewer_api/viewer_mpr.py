"""MPR for the viewer: axial, sagittal and coronal planes and slabs of a series' volume.

Images answer a strong ETag over the series' SOP Instance UIDs and every parameter, computed
from the index alone, so ``If-None-Match`` is answered 304 without assembling the volume.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Annotated, Any, get_args

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from cloud.archive import Archive
from mpr.display import crop_and_resize, encode, to_display
from mpr.reslice import Mode, Plane, Reslice, SliceGeometry, orthogonal, plane_geometry
from mpr.volume import Volume, VolumeError
from mpr.window import Window
from viewer_api.access_deps import study_access
from viewer_api.deps import ArchiveDep
from viewer_api.etag import matches, not_modified, strong_etag, validator_headers
from viewer_api.problems import HTTPProblem
from viewer_api.viewer_params import (
    SERIES,
    Quality,
    accepted_image_type,
    explicit_window,
    parse_size,
    window_header,
    window_key,
)
from viewer_api.viewer_volumes import (
    SeriesInstances,
    VolumesDep,
    locate_series,
    not_available,
    series_volume,
)
from viewer_api.volume_cache import Volumes

# Every route here shows images of one study: live view, in scope, audited as viewing.
router = APIRouter(dependencies=[Depends(study_access("live_view"))])

MAX_THICKNESS_MM = 500.0


@dataclasses.dataclass(frozen=True)
class MprRequest:
    """The parsed, validated query of ``…/mpr`` and ``…/mpr/geometry``."""

    plane: Plane
    position: float | None
    mode: Mode
    thickness: float
    window: Window | None
    invert: bool
    size: tuple[int, int] | None

    def key(self) -> dict[str, object]:
        return {
            "plane": self.plane,
            "position": self.position,
            "mode": self.mode,
            "thickness": self.thickness,
            "window": window_key(self.window),
            "invert": self.invert,
            "size": self.size,
        }


def parse_mpr_request(
    plane: str | None,
    position: float | None,
    mode: str,
    thickness: float | None,
    window: str | None,
    preset: str | None,
    invert: bool,
    size: str | None,
) -> MprRequest:
    planes, modes = get_args(Plane), get_args(Mode)
    if plane not in planes:
        got = "missing" if plane is None else f"{plane!r}"
        raise HTTPProblem(400, "Invalid plane", f"plane must be {', '.join(planes)}; got {got}")
    if mode not in modes:
        raise HTTPProblem(400, "Invalid mode", f"mode must be {', '.join(modes)}; got {mode!r}")
    if position is not None and not math.isfinite(position):
        raise HTTPProblem(400, "Invalid position", "position must be a finite number of mm")
    if thickness is None:
        thickness = 0.0
        if mode != "thin":
            raise HTTPProblem(
                400, "Invalid thickness", f"mode {mode} needs a slab thickness in mm (> 0)"
            )
    if not math.isfinite(thickness) or thickness < 0 or (thickness == 0 and mode != "thin"):
        bound = ">= 0" if mode == "thin" else "> 0"
        raise HTTPProblem(
            400,
            "Invalid thickness",
            f"thickness must be {bound} mm for mode {mode}; got {thickness:g}",
        )
    if thickness > MAX_THICKNESS_MM:
        raise HTTPProblem(
            400,
            "Invalid thickness",
            f"thickness must be at most {MAX_THICKNESS_MM:g} mm; got {thickness:g}",
        )
    return MprRequest(
        plane=plane,  # type: ignore[arg-type]  # checked against Plane above
        position=position,
        mode=mode,  # type: ignore[arg-type]
        thickness=0.0 if mode == "thin" else thickness,
        window=explicit_window(window, preset),
        invert=invert,
        size=parse_size(size),
    )


def _scaled_geometry(geometry: SliceGeometry, rows: int, columns: int) -> SliceGeometry:
    """The geometry of the reslice after scaling to ``rows`` x ``columns`` pixels."""
    if (rows, columns) == (geometry.rows, geometry.columns):
        return geometry
    spacing = geometry.pixel_spacing_mm
    across = spacing * geometry.columns / columns  # the aspect is kept to within a pixel
    down = spacing * geometry.rows / rows
    right, below = np.array(geometry.row_direction), np.array(geometry.column_direction)
    edge = np.array(geometry.top_left_mm) - 0.5 * spacing * (right + below)
    top_left = edge + 0.5 * across * right + 0.5 * down * below
    return dataclasses.replace(
        geometry,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=float(across),
        top_left_mm=(float(top_left[0]), float(top_left[1]), float(top_left[2])),
    )


def _volume_window(volume: Volume, reslice: Reslice, explicit: Window | None) -> Window:
    """The explicit window, else the volume's own, else the reslice's value range."""
    window = explicit or volume.default_window
    if window is not None:
        return window
    pixels = reslice.pixels[np.isfinite(reslice.pixels)]
    low = float(pixels.min()) if pixels.size else 0.0
    high = float(pixels.max()) if pixels.size else 1.0
    return Window((low + high) / 2, max(high - low, 1.0), "linear_exact")


@dataclasses.dataclass(frozen=True)
class MprImage:
    display: np.ndarray
    geometry: SliceGeometry
    window: Window


def render_plane(volume: Volume, request: MprRequest) -> MprImage:
    try:
        reslice = orthogonal(
            volume,
            request.plane,
            _position(volume, request),
            mode=request.mode,
            thickness_mm=request.thickness,
        )
    except VolumeError:
        raise
    except ValueError as exc:
        raise HTTPProblem(400, "Invalid MPR request", str(exc)) from exc
    window = _volume_window(volume, reslice, request.window)
    display = to_display(
        reslice.pixels,
        window,
        invert=request.invert,
        monochrome1=volume.photometric == "MONOCHROME1",
    )
    if request.size is not None:
        display = crop_and_resize(display, None, request.size)
    geometry = _scaled_geometry(reslice.geometry, display.shape[0], display.shape[1])
    return MprImage(display, geometry, window)


def _position(volume: Volume, request: MprRequest) -> float:
    if request.position is not None:
        return request.position
    low, high = plane_geometry(volume, request.plane).position_range_mm
    return (low + high) / 2


def plane_summary(volume: Volume, plane: Plane) -> dict[str, Any]:
    """What the viewer needs to scroll a plane: valid positions, the middle, the image size."""
    geometry = plane_geometry(volume, plane)
    low, high = geometry.position_range_mm
    return {
        "position_range_mm": [low, high],
        "default_position_mm": (low + high) / 2,
        "rows": geometry.rows,
        "columns": geometry.columns,
        "pixel_spacing_mm": geometry.pixel_spacing_mm,
    }


def geometry_json(geometry: SliceGeometry) -> str:
    return json.dumps(geometry.to_dict(), separators=(",", ":"), default=float)


async def _mpr(
    request: Request,
    archive: Archive,
    volumes: Volumes,
    path: tuple[str, str],
    parsed: MprRequest,
    media_type: str,
    quality: int,
) -> Response:
    located: SeriesInstances = await run_in_threadpool(locate_series, archive, *path)
    parameters = {**parsed.key(), "quality": quality if media_type == "image/jpeg" else None}
    etag = strong_etag(located.digest, parameters, media_type)
    if matches(request, etag):
        return not_modified(etag)

    def work() -> tuple[bytes | None, MprImage]:
        image = render_plane(series_volume(archive, volumes, located), parsed)
        if media_type == "application/json":
            return None, image
        return encode(image.display, media_type, quality=quality), image

    try:
        body, image = await run_in_threadpool(work)
    except VolumeError as exc:
        return not_available(str(exc))
    headers = {**validator_headers(etag), **window_header(image.window)}
    if body is None:
        return Response(geometry_json(image.geometry), media_type=media_type, headers=headers)
    headers["X-MPR-Geometry"] = geometry_json(image.geometry)
    return Response(body, media_type=media_type, headers=headers)


async def mpr_query(
    plane: str | None = None,
    position: float | None = None,
    mode: str = "thin",
    thickness: float | None = None,
    window: str | None = None,
    preset: str | None = None,
    invert: bool = False,
    size: str | None = None,
) -> MprRequest:
    """The MPR query parameters, shared by the image and its geometry (one parser)."""
    return parse_mpr_request(plane, position, mode, thickness, window, preset, invert, size)


MprQuery = Annotated[MprRequest, Depends(mpr_query)]


@router.get(SERIES + "/mpr")
async def mpr_image(
    study: str,
    series: str,
    request: Request,
    archive: ArchiveDep,
    volumes: VolumesDep,
    parsed: MprQuery,
    quality: Quality = 90,
) -> Response:
    """An axial, sagittal or coronal plane or slab; its geometry in ``X-MPR-Geometry``."""
    media_type = accepted_image_type(request)
    return await _mpr(request, archive, volumes, (study, series), parsed, media_type, quality)


@router.get(SERIES + "/mpr/geometry")
async def mpr_geometry(
    study: str,
    series: str,
    request: Request,
    archive: ArchiveDep,
    volumes: VolumesDep,
    parsed: MprQuery,
    quality: Quality = 90,
) -> Response:
    """The ``X-MPR-Geometry`` of the same query, as the JSON body."""
    del quality  # accepted so that the image URL's query can be reused as is
    return await _mpr(request, archive, volumes, (study, series), parsed, "application/json", 90)
