"""Teaching export of surgical video (issue 8, Xuzhou spec): a de-identified copy of one
recording, as a new DICOM video object.

``POST /api/videos/{sop}/teaching-export`` (permission ``export``, the study in the requester's
scope) answers ``application/dicom``: the recording's MP4 with faces blurred, burned-in text
blacked out and the sound removed or disguised (`collectors.video_deid.deidentify_mp4`),
re-wrapped under the original header (`collectors.video_downgrade.rewrap_like`), and that
header de-identified with the PS3.15 Basic Profile of the DICOM export (`cloud.deidentify`,
per-project key: same project, same pseudonym and UIDs), claiming the Clean Pixel Data
Option (113101) since the pixels were cleaned, Burned In Annotation NO and Recognizable Visual
Features NO. The stored original is only read. Every request is audited with its project and
options.

The work runs on a worker thread and the answer is synchronous: fine for clips of a few
minutes; a long recording is better exported with ``imaging-cloud video deidentify``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from cloud.access import AccessDeniedError, Principal
from cloud.deidentify import UidRemapper, deidentify, export_key, load_profile, pseudonym_for
from cloud.errors import InstanceNotFoundError, InvalidDatasetError
from cloud.video_derivatives import part10
from cloud.videos import VIDEO_SOP_CLASSES
from collectors.video_deid import AudioAction, DeidReport, deidentify_mp4
from collectors.video_downgrade import rewrap_like
from collectors.video_probe import VideoError
from viewer_api.access_deps import audit_entry, require
from viewer_api.deps import ArchiveDep, SettingsDep
from viewer_api.video_api import mp4_bytes

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/videos", tags=["video teaching export"])
pages = APIRouter(include_in_schema=False)

CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
Fraction01 = Annotated[float, Field(ge=0.0, le=1.0)]
Exporter = Annotated[Principal, Depends(require("export"))]


class TeachingExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    project: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    audio: Literal["remove", "disguise"] = "remove"
    blur_faces: bool = Field(default=True, alias="blurFaces")
    text_regions: list[Annotated[list[Fraction01], Field(min_length=4, max_length=4)]] = Field(
        default_factory=list, alias="textRegions", max_length=20
    )
    detect_text: bool = Field(default=True, alias="detectText")


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def teaching_copy(
    original: Dataset,
    key: bytes,
    *,
    audio: AudioAction = "remove",
    blur_faces: bool = True,
    text_regions: Sequence[Sequence[float]] = (),
    detect_text: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[Dataset, DeidReport]:
    """The de-identified DICOM copy of a DICOM video object (``original`` is not changed).

    ``key`` is the UID-remapping and pseudonym key (`cloud.deidentify.export_key` for a
    project). Raises `InvalidDatasetError` when the object holds no usable video.
    """
    with tempfile.TemporaryDirectory(prefix="teaching-export-") as tmp:
        source, cleaned = Path(tmp) / "original.mp4", Path(tmp) / "cleaned.mp4"
        source.write_bytes(mp4_bytes(original))
        try:
            report = deidentify_mp4(
                source, cleaned, blur_faces=blur_faces, audio=audio,
                text_regions=list(text_regions), detect_text=detect_text, progress=progress,
            )  # fmt: skip
            rewrapped = rewrap_like(original, cleaned)
        except VideoError as exc:
            raise InvalidDatasetError(
                f"the recording cannot be de-identified: {exc.detail}"
            ) from exc
    pseudonym = pseudonym_for(str(original.get("PatientID", "") or ""), key)
    clean = deidentify(rewrapped, load_profile(), UidRemapper(key), patient_pseudonym=pseudonym)
    cleaned_pixels = blur_faces or bool(report.regions_masked)
    methods = list(clean.DeidentificationMethod)
    codes = list(clean.DeidentificationMethodCodeSequence)
    if cleaned_pixels:
        codes.append(_code(*CLEAN_PIXEL_DATA))
        done = [
            "faces blurred" if blur_faces else "",
            f"{len(report.regions_masked)} burned-in text regions blacked out",
        ]
        methods.append(("Clean Pixel Data: " + ", ".join(d for d in done if d))[:64])
    sound = {"removed": "audio removed", "disguised": "voice disguised (pitch shift)"}
    if report.audio in sound:
        methods.append(sound[report.audio])
    clean.DeidentificationMethod = methods
    clean.DeidentificationMethodCodeSequence = DicomSequence(codes)
    clean.BurnedInAnnotation = "NO"
    clean.RecognizableVisualFeatures = "NO" if blur_faces else "YES"
    return clean, report


@router.post("/{sop}/teaching-export", response_model=None)
async def teaching_export(
    sop: str,
    body: TeachingExportRequest,
    request: Request,
    archive: ArchiveDep,
    settings: SettingsDep,
    who: Exporter,
) -> Response:
    """The recording de-identified for teaching, as a DICOM file (attachment)."""
    video = await run_in_threadpool(archive.videos.by_uid, sop)
    if video is None:
        raise InstanceNotFoundError(f"video {sop} is not in the archive")
    study = video.study_instance_uid
    options = {
        "project": body.project,
        "sop_instance_uid": sop,
        "audio": body.audio,
        "blur_faces": body.blur_faces,
        "text_regions": body.text_regions,
        "detect_text": body.detect_text,
    }
    try:
        owner = await run_in_threadpool(archive.access.require_study, who, "export", study)
    except AccessDeniedError:
        denied = audit_entry(
            who, request, "export", outcome="denied", study_instance_uid=study, detail=options
        )
        await run_in_threadpool(archive.audit.append, denied)
        raise
    stored = (await run_in_threadpool(archive.locate, study, None, sop))[0]
    if stored.sop_class_uid not in VIDEO_SOP_CLASSES:
        raise InvalidDatasetError(f"instance {sop} is not a video object")
    # Audited before the work, like the study export: the data is read even if cleaning fails.
    entry = audit_entry(
        who, request, "export", study_instance_uid=study, patient_id=owner.patient_id,
        detail={**options, "kind": "teaching_video"},
    )  # fmt: skip
    await run_in_threadpool(archive.audit.append, entry)

    def work() -> bytes:
        original = archive.read_dataset(stored)
        key = export_key(settings.data_dir, body.project)
        clean, report = teaching_copy(
            original, key, audio=body.audio, blur_faces=body.blur_faces,
            text_regions=body.text_regions, detect_text=body.detect_text,
        )  # fmt: skip
        logger.info(
            "teaching export of %s for %s: %s", sop, body.project, json.dumps(report.as_dict())
        )
        return part10(clean)

    data = await run_in_threadpool(work)
    filename = f"{body.project}-teaching-video.dcm"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
    }
    return Response(data, media_type="application/dicom", headers=headers)
