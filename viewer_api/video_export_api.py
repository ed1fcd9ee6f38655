"""Teaching export of surgical video (issue 8, Xuzhou spec): a de-identified copy of one
recording, as a new DICOM video object.

``POST /api/videos/{sop}/teaching-export`` (permission ``export``, the study in the requester's
scope) answers ``application/dicom``: the recording's MP4 with faces blurred, burned-in text
blacked out and the sound removed or pitch-shifted (`collectors.video_deid.deidentify_mp4`),
under the original header de-identified with the PS3.15 Basic Profile of the DICOM export
(`cloud.deidentify`, per-project key: same project, same pseudonym, study and series UIDs).

The copy claims only what was done: the Clean Pixel Data Option (113101) and Burned In
Annotation NO only when burned-in text was looked for over the picture (regions given, or
detection ran on a changing scene; otherwise Burned In Annotation, type 3 in the General Image
module, is left out), the Clean Recognizable Visual Features Option (113102) and Recognizable
Visual Features NO only when faces were blurred. A pitch shift is reversible and says so. Its
SOP Instance UID is derived from the remapped original UID and the options, so two exports
with different options are different objects and the same options give the same UID again.

Memory: the stored object is read once, its MP4 written straight to a temporary file from the
Pixel Data fragments (`viewer_api.video_clips.mp4_fragments`), the cleaned MP4 streamed into the
answer file (`collectors.video_downgrade.write_part10`) and the answer streamed from disk. At
most `EXPORT_SLOTS` exports run at once per process; more get 503 with Retry-After.
The stored original is only read. Every request is audited with its project and options.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID
from starlette.background import BackgroundTask

from cloud.access import AccessDeniedError, Principal
from cloud.deidentify import UidRemapper, deidentify, export_key, load_profile, pseudonym_for
from cloud.errors import InstanceNotFoundError, InvalidDatasetError
from cloud.videos import VIDEO_SOP_CLASSES
from collectors.video_deid import AudioAction, DeidReport, deidentify_mp4
from collectors.video_downgrade import header_like, write_part10
from collectors.video_probe import VideoError
from viewer_api.access_deps import audit_entry, require
from viewer_api.deps import ArchiveDep, SettingsDep
from viewer_api.problems import HTTPProblem
from viewer_api.video_clips import mp4_fragments

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api/videos", tags=["video teaching export"])
pages = APIRouter(include_in_schema=False)

CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")  # PS3.16 CID 7050
CLEAN_VISUAL_FEATURES = ("113102", "Clean Recognizable Visual Features Option")
AUDIO_METHODS = {
    "removed": "audio removed",
    # De-identification Method is LO (64 characters at most).
    "disguised": "audio pitch-shifted (reversible; voice not de-identified)",
    "kept": "audio kept",
}
EXPORT_SLOTS = 2  # concurrent teaching exports per process: each is a full re-encode
RETRY_AFTER_SECONDS = 30
_slots = threading.BoundedSemaphore(EXPORT_SLOTS)
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


def export_uid(key: bytes, remapped_uid: str, options: dict[str, Any]) -> str:
    """The SOP Instance UID of a teaching copy: ``2.25.`` and 128 bits of
    HMAC(project key, remapped UID + options JSON). Different options (a different object)
    give a different UID; the same ones give the same UID again."""
    message = remapped_uid + "\x00" + json.dumps(options, sort_keys=True, separators=(",", ":"))
    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def extract_mp4(part10: bytes, target: Path) -> Dataset:
    """Write the MP4 of a Part-10 video object to ``target`` straight from its Pixel Data
    fragments (no copy of the video in memory); the header, without Pixel Data."""
    fragments = mp4_fragments(part10)
    with target.open("wb") as out:
        for piece in fragments.pieces():
            out.write(piece)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = dcmread(io.BytesIO(part10), stop_before_pixels=True)
    # A plain Dataset: pydicom's FileDataset keeps the buffer it was read from (the whole
    # recording) as ``.buffer``.
    header = Dataset(parsed)
    header.file_meta = parsed.file_meta
    return header


def teaching_header(
    header: Dataset,
    cleaned_mp4: Path,
    key: bytes,
    report: DeidReport,
    options: dict[str, Any],
) -> Dataset:
    """The de-identified header of the teaching copy of ``header``'s object whose cleaned MP4
    is ``cleaned_mp4`` (stream attributes and transfer syntax taken from it)."""
    rewrapped = header_like(header, cleaned_mp4)
    pseudonym = pseudonym_for(str(header.get("PatientID", "") or ""), key)
    remapper = UidRemapper(key)
    clean = deidentify(rewrapped, load_profile(), remapper, patient_pseudonym=pseudonym)
    new_uid = export_uid(key, remapper.remap(str(header.SOPInstanceUID)), options)
    clean.SOPInstanceUID = new_uid
    clean.file_meta.MediaStorageSOPInstanceUID = UID(new_uid)
    methods = list(clean.DeidentificationMethod)
    codes = list(clean.DeidentificationMethodCodeSequence)
    done: list[str] = []
    for item in ("BurnedInAnnotation", "RecognizableVisualFeatures"):
        if item in clean:
            del clean[item]  # the source's claims say nothing about the copy
    if report.text_cleaned:
        codes.append(_code(*CLEAN_PIXEL_DATA))
        regions = f"{len(report.regions_masked)} burned-in text regions blacked out"
        methods.append(f"Clean Pixel Data: {regions}"[:64])
        done.append(regions)
        clean.BurnedInAnnotation = "NO"
    elif report.regions_masked:
        done.append(f"{len(report.regions_masked)} text regions blacked out (not verified)")
    # else: not known either way; type 3 in the General Image module, so left out.
    if options.get("blur_faces"):
        codes.append(_code(*CLEAN_VISUAL_FEATURES))
        methods.append("Clean Recognizable Visual Features: faces blurred")
        done.append("faces blurred")
        clean.RecognizableVisualFeatures = "NO"
    else:
        clean.RecognizableVisualFeatures = "YES"
    if report.audio in AUDIO_METHODS:
        methods.append(AUDIO_METHODS[report.audio])
        done.append(AUDIO_METHODS[report.audio])
    clean.DeidentificationMethod = methods
    clean.DeidentificationMethodCodeSequence = DicomSequence(codes)
    clean.ImageType = ["DERIVED", "PRIMARY"]
    clean.DerivationDescription = (
        "de-identified copy for teaching, re-encoded H.264: " + "; ".join(done or ["header only"])
    )[:1024]
    clean.LossyImageCompression = "01"
    return clean


def teaching_copy_file(
    read: Callable[[], bytes],
    key: bytes,
    out_path: Path,
    *,
    audio: AudioAction = "remove",
    blur_faces: bool = True,
    text_regions: Sequence[Sequence[float]] = (),
    detect_text: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
) -> tuple[Dataset, DeidReport]:
    """Write the de-identified DICOM copy of the Part-10 video object that ``read`` returns
    to ``out_path``; its header (without Pixel Data) and what was cleaned. The object's bytes
    are dropped once its MP4 is on disk.

    ``key`` is the UID-remapping and pseudonym key (`cloud.deidentify.export_key` for a
    project). Raises `InvalidDatasetError` when the object holds no usable video.
    """
    options = teaching_options(audio, blur_faces, text_regions, detect_text)
    with tempfile.TemporaryDirectory(prefix="teaching-export-") as tmp:
        source, cleaned = Path(tmp) / "original.mp4", Path(tmp) / "cleaned.mp4"
        header = extract_mp4(read(), source)
        try:
            report = deidentify_mp4(
                source, cleaned, blur_faces=blur_faces, audio=audio,
                text_regions=list(text_regions), detect_text=detect_text, progress=progress,
            )  # fmt: skip
            source.unlink()
            clean = teaching_header(header, cleaned, key, report, options)
            write_part10(clean, cleaned, out_path)
        except VideoError as exc:
            raise InvalidDatasetError(
                f"the recording cannot be de-identified: {exc.detail}"
            ) from exc
    return clean, report


def teaching_options(
    audio: str, blur_faces: bool, text_regions: Sequence[Sequence[float]], detect_text: bool
) -> dict[str, Any]:
    """The options that decide the copy's pixels and sound (and so its SOP Instance UID)."""
    return {
        "audio": audio,
        "blur_faces": blur_faces,
        "text_regions": [[float(v) for v in region] for region in text_regions],
        "detect_text": detect_text,
    }


@router.post("/{sop}/teaching-export", response_model=None)
async def teaching_export(
    sop: str,
    body: TeachingExportRequest,
    request: Request,
    archive: ArchiveDep,
    settings: SettingsDep,
    who: Exporter,
) -> FileResponse:
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
    if not _slots.acquire(blocking=False):  # released by the work (or below on failure)
        raise HTTPProblem(
            503,
            "Busy",
            f"{EXPORT_SLOTS} teaching exports are already running; try again later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    # Audited before the work, like the study export: the data is read even if cleaning fails.
    entry = audit_entry(
        who, request, "export", study_instance_uid=study, patient_id=owner.patient_id,
        detail={**options, "kind": "teaching_video"},
    )  # fmt: skip
    try:
        await run_in_threadpool(archive.audit.append, entry)
    except BaseException:
        _slots.release()
        raise
    folder = Path(tempfile.mkdtemp(prefix="teaching-answer-"))
    answer = folder / "teaching-video.dcm"

    def work() -> None:
        try:
            key = export_key(settings.data_dir, body.project)
            _, report = teaching_copy_file(
                lambda: archive.read(stored), key, answer, audio=body.audio,
                blur_faces=body.blur_faces, text_regions=body.text_regions,
                detect_text=body.detect_text,
            )  # fmt: skip
        finally:
            _slots.release()
        logger.info(
            "teaching export of %s for %s: %s", sop, body.project, json.dumps(report.as_dict())
        )

    try:
        await run_in_threadpool(work)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    filename = f"{body.project}-teaching-video.dcm"
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
    }
    return FileResponse(
        answer,
        media_type="application/dicom",
        headers=headers,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )
