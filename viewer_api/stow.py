"""STOW-RS (PS3.18 10.5): store instances posted as multipart/related application/dicom."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Annotated, Any

import pydicom
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from cloud.access import Principal
from cloud.archive import Archive
from cloud.dataset import check_uid
from cloud.errors import ArchiveError
from cloud.hospitals import CREDENTIAL_PREFIX, HospitalRef
from collectors.multipart import BodyPart, parse_media_type, split_multipart
from viewer_api.access_deps import TokensDep, audit_entry, bearer_token, principal, require
from viewer_api.deps import ArchiveDep, SettingsDep, dicomweb_base
from viewer_api.problems import HTTPProblem

logger = logging.getLogger(__name__)
router = APIRouter(tags=["STOW-RS"])


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPProblem(413, "Request too large", f"STOW-RS bodies are limited to {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(
                413, "Request too large", f"STOW-RS bodies are limited to {limit} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parts(request: Request, body: bytes) -> list[BodyPart]:
    content_type = parse_media_type(request.headers.get("content-type", ""))
    if content_type.media_type != "multipart/related":
        raise HTTPProblem(
            415,
            "Unsupported media type",
            'STOW-RS takes multipart/related; type="application/dicom"',
        )
    if content_type.part_type not in (None, "application/dicom"):
        raise HTTPProblem(
            415,
            "Unsupported media type",
            f"parts of type {content_type.part_type} are not supported; send application/dicom",
        )
    parts = split_multipart(body, content_type.params.get("boundary", ""))
    if not parts:
        raise HTTPProblem(400, "Malformed multipart body", "the body holds no parts")
    return parts


def _reference(sop_class: str, sop_instance: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
    return item


def _store_all(
    archive: Archive,
    parts: list[BodyPart],
    study: str | None,
    source: str,
    base: str,
    hospital_pk: int | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        part_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            item = _reference("", "")
            item["00081197"] = {"vr": "US", "Value": [0xC000]}
            failed.append(item)
            logger.info("STOW part %d refused: content type %s", index, part_type)
            continue
        try:
            outcome = archive.store(
                part.content,
                source=source,
                expected_study_instance_uid=study,
                hospital_pk=hospital_pk,
            )
        except ArchiveError as exc:
            item = _reference(*_uids_of(part.content))
            item["00081197"] = {"vr": "US", "Value": [exc.dimse_status]}
            failed.append(item)
            logger.info("STOW part %d refused: %s", index, exc.detail)
            continue
        item = _reference(outcome.sop_class_uid, outcome.sop_instance_uid)
        item["00081190"] = {
            "vr": "UR",
            "Value": [
                f"{base}/studies/{outcome.study_instance_uid}/series/"
                f"{outcome.series_instance_uid}/instances/{outcome.sop_instance_uid}"
            ],
        }
        stored.append(item)
    return stored, failed


def _uids_of(data: bytes) -> tuple[str, str]:
    """Best-effort SOP Class / Instance UIDs of a refused object, for the failure report.

    Read leniently and without pixel data: a sender needs to know *which* object was
    refused even when the refusal is about its damaged body.
    """
    try:
        dataset = pydicom.dcmread(
            io.BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
        return str(dataset.get("SOPClassUID", "")), str(dataset.get("SOPInstanceUID", ""))
    except Exception:  # any damage at all: report the failure without UIDs
        return "", ""


async def _stow(
    request: Request,
    archive: Archive,
    limit: int,
    study: str | None,
    uploader: Uploader,
) -> Response:
    if study is not None:
        try:
            check_uid(study, "StudyInstanceUID")
        except ArchiveError as exc:
            raise HTTPProblem(400, "Invalid study UID", exc.detail) from exc
    body = await _read_body(request, limit)
    parts = _parts(request, body)
    client = request.client.host if request.client else "unknown"
    hospital, user = uploader.hospital, uploader.user
    hospital_pk: int | None
    if hospital is not None:
        source, hospital_pk = f"gateway:{hospital.hospital_id}@{client}", hospital.pk
    else:
        assert user is not None
        source, hospital_pk = f"user:{user.name}@{client}", user.hospital_pk
    base = dicomweb_base(request)
    stored, failed = await run_in_threadpool(
        _store_all, archive, parts, study, source, base, hospital_pk
    )
    if user is not None:
        entry = audit_entry(user, request, "upload", detail={"stored": len(stored)})
        await run_in_threadpool(archive.audit.append, entry)
    response: dict[str, Any] = {}
    if study:
        response["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    status = 200 if not failed else 202 if stored else 409
    return Response(
        json.dumps(response, separators=(",", ":")),
        status_code=status,
        media_type="application/dicom+json",
    )


@dataclass(frozen=True)
class Uploader:
    """A hospital gateway (its credential) or a signed-in user with the upload permission."""

    hospital: HospitalRef | None = None
    user: Principal | None = None


async def uploader(request: Request, archive: ArchiveDep, tokens: TokensDep) -> Uploader:
    token = bearer_token(request)
    if token is not None and token.startswith(CREDENTIAL_PREFIX):
        hospital = await run_in_threadpool(archive.hospitals.authenticate, token)
        if hospital is None:
            raise HTTPProblem(401, "Unauthorized", "the credential is unknown or revoked")
        return Uploader(hospital=hospital)
    who = await principal(request, archive, tokens)
    return Uploader(user=await require("upload")(request, who, archive))


UploaderDep = Annotated[Uploader, Depends(uploader)]


@router.post("/studies")
async def store_instances(
    request: Request, archive: ArchiveDep, settings: SettingsDep, sender: UploaderDep
) -> Response:
    return await _stow(request, archive, settings.max_stow_bytes, None, sender)


@router.post("/studies/{study}")
async def store_study_instances(
    study: str,
    request: Request,
    archive: ArchiveDep,
    settings: SettingsDep,
    sender: UploaderDep,
) -> Response:
    return await _stow(request, archive, settings.max_stow_bytes, study, sender)
