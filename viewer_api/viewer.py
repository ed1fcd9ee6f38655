"""The viewer's HTTP API under ``/viewer-api`` (docs/viewer-contract.md).

Study browser JSON, volume information and measurements are here; rendered frames are in
`viewer_api.viewer_render` and MPR images in `viewer_api.viewer_mpr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from cloud.archive import Archive
from cloud.errors import InstanceNotFoundError
from cloud.query import Match, Query
from mpr.measure import angle_deg, distance_mm, region_statistics
from mpr.volume import Volume, VolumeError
from viewer_api import anonymise, viewer_fusion, viewer_mpr, viewer_render
from viewer_api.access_deps import SearcherDep, StudyGrant, study_access
from viewer_api.deps import ArchiveDep, SettingsDep
from viewer_api.problems import HTTPProblem
from viewer_api.viewer_params import SERIES
from viewer_api.viewer_volumes import (
    SeriesInstances,
    VolumesDep,
    locate_series,
    not_available,
    not_offered_reason,
    series_volume,
)
from viewer_api.volume_cache import Volumes, volume_key

router = APIRouter(prefix="/viewer-api", tags=["viewer"])
router.include_router(viewer_render.router)
router.include_router(viewer_mpr.router)
router.include_router(viewer_fusion.router)

_LOOKUP_KEYS = ("AccessionNumber", "StudyInstanceUID", "PatientID")
ANONYMISED = "(anonymised 已匿名)"
Details = Annotated[StudyGrant, Depends(study_access("view_details"))]


# --- study browser ---------------------------------------------------------------------------


def _study_json(attributes: dict[str, Any], modalities: Sequence[str], phi: bool) -> dict[str, Any]:
    def identifying(keyword: str) -> str:
        return (attributes.get(keyword) or "") if phi else ""

    return {
        "study_instance_uid": attributes.get("StudyInstanceUID") or "",
        "accession_number": identifying("AccessionNumber"),
        "patient_name": identifying("PatientName") or ("" if phi else ANONYMISED),
        "patient_id": identifying("PatientID"),
        "study_date": attributes.get("StudyDate") or "",
        "study_description": attributes.get("StudyDescription") or "",
        "modalities": sorted({m for m in modalities if m}),
    }


@router.get("/studies")
async def find_studies(
    request: Request, archive: ArchiveDep, settings: SettingsDep, who: SearcherDep
) -> Response:
    """Studies by exact AccessionNumber, StudyInstanceUID or PatientID (at least one)."""
    params = request.query_params
    unknown = sorted(set(params) - set(_LOOKUP_KEYS))
    if unknown:
        raise HTTPProblem(
            400,
            "Invalid query",
            f"unknown parameter(s) {', '.join(unknown)}; use {', '.join(_LOOKUP_KEYS)}",
        )
    filters = {key: params.getlist(key)[-1].strip() for key in _LOOKUP_KEYS if key in params}
    filters = {key: value for key, value in filters.items() if value}
    if not filters:
        raise HTTPProblem(400, "Invalid query", f"give one of {', '.join(_LOOKUP_KEYS)}")
    for key, value in filters.items():
        if any(c in value for c in "*?\\") or (key == "StudyInstanceUID" and "," in value):
            raise HTTPProblem(400, "Invalid query", f"{key} is matched exactly: no wildcards")
    if not who.phi:
        anonymise.refuse_identifying_filters(set(filters))
    query = Query("study", filters=filters, limit=settings.max_query_results)
    query.scope = await run_in_threadpool(archive.access.scope, who)
    matches: list[Match] = await run_in_threadpool(archive.search, query)
    return JSONResponse(
        [
            _study_json(m.attributes, m.attributes.get("ModalitiesInStudy") or [], who.phi)
            for m in matches
        ]
    )


def _series_entries(matches: list[Match], volumes: Volumes) -> list[dict[str, Any]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for match in matches:
        grouped.setdefault(match.attributes["SeriesInstanceUID"], []).append(match.attributes)
    entries = []
    for uid, rows in grouped.items():
        first = rows[0]
        rows.sort(key=lambda r: (r.get("InstanceNumber") is None, r.get("InstanceNumber") or 0))
        modality = first.get("Modality") or ""
        images = sum(r.get("NumberOfFrames") or 1 for r in rows)
        reason = not_offered_reason(modality, images)
        if reason is None:
            key = volume_key(uid, (r["SOPInstanceUID"] for r in rows))
            failure = volumes.failure(key)
            reason = None if failure is None else str(failure)
        entries.append(
            {
                "series_instance_uid": uid,
                "modality": modality,
                "series_number": first.get("SeriesNumber"),
                "series_description": first.get("SeriesDescription") or "",
                "instances": [
                    {
                        "sop_instance_uid": r["SOPInstanceUID"],
                        "number_of_frames": r.get("NumberOfFrames") or 1,
                        "instance_number": r.get("InstanceNumber"),
                    }
                    for r in rows
                ],
                "mpr": {"offered": reason is None, "reason": reason},
            }
        )
    entries.sort(key=lambda e: (e["series_number"] is None, e["series_number"] or 0))
    return entries


@router.get("/studies/{study}")
async def study_detail(
    study: str, archive: ArchiveDep, volumes: VolumesDep, grant: Details
) -> Response:
    """The study with its series and their instances in display order."""
    query = Query("instance", study_instance_uid=study)
    matches: list[Match] = await run_in_threadpool(archive.search, query)
    if not matches:
        raise InstanceNotFoundError(f"study {study} is not in the archive")
    series = _series_entries(matches, volumes)
    modalities = [s["modality"] for s in series]
    body = _study_json(matches[0].attributes, modalities, grant.principal.phi)
    body["series"] = series
    return JSONResponse(body)


# --- volume information ----------------------------------------------------------------------


def _volume_json(series: SeriesInstances, volume: Volume) -> dict[str, Any]:
    planes = {
        plane: viewer_mpr.plane_summary(volume, plane) for plane in ("axial", "sagittal", "coronal")
    }
    window = volume.default_window
    return {
        "offered": True,
        "reason": None,
        "modality": volume.modality or series.modality,
        "images": len(volume.sop_instance_uids),
        "spacing_mm": [float(v) for v in volume.spacing],
        "shape": [int(v) for v in volume.voxels.shape],
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "planes": planes,
        "default_window": None if window is None else [window.center, window.width],
    }


@router.get(SERIES + "/volume", dependencies=[Depends(study_access("live_view"))])
async def volume_info(
    study: str, series: str, archive: ArchiveDep, volumes: VolumesDep
) -> Response:
    def work() -> dict[str, Any]:
        located = locate_series(archive, study, series)
        return _volume_json(located, series_volume(archive, volumes, located))

    try:
        return JSONResponse(await run_in_threadpool(work))
    except VolumeError as exc:
        return not_available(str(exc))


# --- measurements ----------------------------------------------------------------------------

Point = tuple[FiniteFloat, FiniteFloat, FiniteFloat]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LengthRequest(_Strict):
    kind: Literal["length"]
    points: Annotated[list[Point], Field(min_length=2, max_length=2)]


class AngleRequest(_Strict):
    kind: Literal["angle"]
    points: Annotated[list[Point], Field(min_length=3, max_length=3)]


class RegionRequest(_Strict):
    kind: Literal["region"]
    centre: Point
    radius_mm: Annotated[float, Field(gt=0, le=500, allow_inf_nan=False)]
    normal: Point = (0.0, 0.0, 1.0)


class PointRequest(_Strict):
    kind: Literal["point"]
    point: Point


MeasureRequest = Annotated[
    LengthRequest | AngleRequest | RegionRequest | PointRequest, Field(discriminator="kind")
]


def _unit(volume: Volume) -> str:
    return "HU" if volume.modality.upper() == "CT" else ""


def _measure_on_volume(
    request: RegionRequest | PointRequest, archive: Archive, volumes: Volumes, path: tuple[str, str]
) -> dict[str, Any]:
    volume = series_volume(archive, volumes, locate_series(archive, *path))
    if isinstance(request, PointRequest):
        value = float(volume.value_at(request.point))
        return {"value": value if math.isfinite(value) else None, "unit": _unit(volume)}
    stats = region_statistics(volume, request.centre, request.radius_mm, request.normal)
    return {**stats, "unit": _unit(volume)}


@router.post(SERIES + "/measure", dependencies=[Depends(study_access("live_view"))])
async def measure(
    study: str,
    series: str,
    body: MeasureRequest,
    archive: ArchiveDep,
    volumes: VolumesDep,
) -> Response:
    """Length and angle in patient mm/degrees; point value and region statistics on the volume."""
    if isinstance(body, LengthRequest | AngleRequest):
        await run_in_threadpool(archive.locate, study, series)  # 404 for an unknown series
        try:
            if isinstance(body, LengthRequest):
                return JSONResponse({"length_mm": distance_mm(*body.points)})
            vertex_first = (body.points[1], body.points[0], body.points[2])
            return JSONResponse({"angle_deg": angle_deg(*vertex_first)})
        except ValueError as exc:
            raise HTTPProblem(400, "Invalid measurement", str(exc)) from exc
    if isinstance(body, RegionRequest) and not any(body.normal):
        raise HTTPProblem(400, "Invalid measurement", "normal must not be the zero vector")
    try:
        result = await run_in_threadpool(
            _measure_on_volume, body, archive, volumes, (study, series)
        )
    except VolumeError as exc:
        return not_available(str(exc))
    except ValueError as exc:
        raise HTTPProblem(400, "Invalid measurement", str(exc)) from exc
    return JSONResponse(result)
