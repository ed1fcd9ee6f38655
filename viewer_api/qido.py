"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from cloud.access import Principal
from cloud.archive import Archive
from cloud.query import ATTRIBUTES, Level, Match, Query, matchable
from viewer_api import anonymise, dicom_json
from viewer_api.access_deps import SearcherDep
from viewer_api.deps import ArchiveDep, SettingsDep, dicomweb_base
from viewer_api.problems import HTTPProblem

router = APIRouter(tags=["QIDO-RS"])

DICOM_JSON = "application/dicom+json"
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
# Returned at each level whether asked for or not (PS3.18 Tables 10.6.3-3 to -5).
_DEFAULTS: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID", "Modality", "SeriesDescription", "SeriesInstanceUID",
        "SeriesNumber", "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "BodyPartExamined",
    ),
    "instance": (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
        "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
    ),
}  # fmt: skip


def _keyword(name: str) -> str:
    """A query key as a DICOM keyword, accepting keywords and 8-digit tags."""
    if _TAG.match(name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    elif tag_for_keyword(name) is not None:
        return name
    raise HTTPProblem(400, "Invalid query", f"{name!r} is not a DICOM attribute keyword or tag")


def _int_param(values: list[str], name: str, maximum: int) -> int | None:
    if not values:
        return None
    try:
        number = int(values[-1])
    except ValueError:
        raise HTTPProblem(400, "Invalid query", f"{name} must be an integer") from None
    if number < 0 or number > maximum:
        raise HTTPProblem(400, "Invalid query", f"{name} must be between 0 and {maximum}")
    return number


def _parse(request: Request, level: Level, max_results: int) -> tuple[Query, set[str], list[str]]:
    params = request.query_params
    query = Query(level)
    ignored: list[str] = []
    include: set[str] = set()
    for name in params:
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        if matchable(keyword, level):
            query.filters[keyword] = params.getlist(name)[-1]
        else:
            ignored.append(keyword)
        include.add(keyword)
    for value in params.getlist("includefield"):
        for item in value.split(","):
            if item.strip():
                include.add("all" if item.strip() == "all" else _keyword(item.strip()))
    query.limit = _int_param(params.getlist("limit"), "limit", max_results) or max_results
    query.offset = _int_param(params.getlist("offset"), "offset", 2**31) or 0
    return query, include, ignored


def _respond(
    archive: Archive,
    matches: list[Match],
    level: Level,
    include: set[str],
    base: str,
    phi: bool,
) -> list[dict[str, Any]]:
    wanted = set(_DEFAULTS[level]) | (include - {"all"})
    if "all" in include:
        wanted |= {k for k in ATTRIBUTES if matchable(k, level)}
    extra = wanted - set(ATTRIBUTES) - set(_DEFAULTS[level])
    results = []
    for match in matches:
        attrs = {k: v for k, v in match.attributes.items() if k in wanted}
        body = dicom_json.dataset(attrs)
        if level == "instance" and "all" in include and match.representative_instance_pk:
            body = _merge_metadata(archive, match.representative_instance_pk, body, None)
        elif extra and match.representative_instance_pk:
            tags = {dicom_json.tag_hex(k) for k in extra}
            body = _merge_metadata(archive, match.representative_instance_pk, body, tags)
        body["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, level, match)]}
        body["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        if not phi:
            body = anonymise.strip_json(body)
        results.append(dict(sorted(body.items())))
    return results


def _merge_metadata(
    archive: Archive, instance_pk: int, body: dict[str, Any], tags: set[str] | None
) -> dict[str, Any]:
    metadata = json.loads(archive.metadata_json_by_pk(instance_pk))
    for tag, value in metadata.items():
        if (tags is None or tag in tags) and "BulkDataURI" not in value:
            body.setdefault(tag, value)
    return body


def _retrieve_url(base: str, level: Level, match: Match) -> str:
    attrs = match.attributes
    url = f"{base}/studies/{attrs['StudyInstanceUID']}"
    if level in ("series", "instance"):
        url += f"/series/{attrs['SeriesInstanceUID']}"
    if level == "instance":
        url += f"/instances/{attrs['SOPInstanceUID']}"
    return url


async def _search(
    request: Request,
    archive: Archive,
    who: Principal,
    max_results: int,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    query, include, ignored = _parse(request, level, max_results)
    query.study_instance_uid, query.series_instance_uid = study, series
    if not who.phi:
        anonymise.refuse_identifying_filters(set(query.filters))
    base = dicomweb_base(request)

    def work() -> list[dict[str, Any]]:
        query.scope = archive.access.scope(who)
        return _respond(archive, archive.search(query), level, include, base, who.phi)

    results = await run_in_threadpool(work)
    headers = {}
    if ignored:
        names = ", ".join(sorted(set(ignored)))
        headers["Warning"] = f'299 imaging-cloud "Matching not supported at this level: {names}"'
    body = json.dumps(results, ensure_ascii=False, separators=(",", ":"))
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies")
async def search_studies(
    request: Request, archive: ArchiveDep, settings: SettingsDep, who: SearcherDep
) -> Response:
    return await _search(request, archive, who, settings.max_query_results, "study")


@router.get("/series")
async def search_series(
    request: Request, archive: ArchiveDep, settings: SettingsDep, who: SearcherDep
) -> Response:
    return await _search(request, archive, who, settings.max_query_results, "series")


@router.get("/instances")
async def search_instances(
    request: Request, archive: ArchiveDep, settings: SettingsDep, who: SearcherDep
) -> Response:
    return await _search(request, archive, who, settings.max_query_results, "instance")


@router.get("/studies/{study}/series")
async def search_study_series(
    study: str, request: Request, archive: ArchiveDep, settings: SettingsDep, who: SearcherDep
) -> Response:
    return await _search(request, archive, who, settings.max_query_results, "series", study)


@router.get("/studies/{study}/instances")
async def search_study_instances(
    study: str, request: Request, archive: ArchiveDep, settings: SettingsDep, who: SearcherDep
) -> Response:
    return await _search(request, archive, who, settings.max_query_results, "instance", study)


@router.get("/studies/{study}/series/{series}/instances")
async def search_series_instances(
    study: str,
    series: str,
    request: Request,
    archive: ArchiveDep,
    settings: SettingsDep,
    who: SearcherDep,
) -> Response:
    limit = settings.max_query_results
    return await _search(request, archive, who, limit, "instance", study, series)
