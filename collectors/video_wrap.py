"""Wrap an MP4 recording as a DICOM video object, without re-encoding.

PS3.5 (8.2.7-8.2.11) says the Pixel Data of the MPEG-4 AVC / HEVC transfer syntaxes holds the
*container* (MPEG-TS or MP4), audio included, in a single fragment after an empty Basic Offset
Table. So the file's bytes go in unchanged (a MOV is first remuxed to MP4: streams copied, not
re-encoded); a trailing NUL pads an odd length, as for MPEG-2 (PS3.5 8.2.5).

The IOD is Video Endoscopic Image when the camera role is ``endoscope`` and Video Photographic
Image otherwise (panorama or field camera), PS3.3 A.32.5 / A.32.7.

`write` streams the file into the output after the encoded header, so wrapping a large file
costs one copy; `wrap` builds the same object in memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

from collectors.video_conformance import HEVC_MAIN10, dicom_encoding
from collectors.video_probe import VideoError, VideoFacts, probe

logger = logging.getLogger(__name__)

UID_ROOT = "1.2.826.0.1.3680043.10.1370."  # the project's root (imaging_cloud.synthetic)
VIDEO_ENDOSCOPIC = UID("1.2.840.10008.5.1.4.1.1.77.1.1.1")
VIDEO_PHOTOGRAPHIC = UID("1.2.840.10008.5.1.4.1.1.77.1.4.1")
CAMERA_ROLES = ("panorama", "field", "endoscope")
VIDEO_CLASSES = {"field": "surgical_field_video", "safety": "safety_video"}
# The private block the cloud's video catalogue reads (cloud.videos): what DICOM has no
# attribute for. Collectors may not import cloud, so the two constants are kept in step by
# tests/unit/test_video_catalogue.py.
PRIVATE_CREATOR = "IMAGING_CLOUD VIDEO"
PRIVATE_GROUP = 0x0013
FRAME_TIME_TAG = 0x00181063
_CHUNK = 8 * 1024 * 1024


# Identifiers are refused when too long: cut short, a patient ID or an accession number may
# name another patient or procedure. Descriptive text (procedure, diagnosis, names...) is cut
# to its VR's length instead (LO 64 characters, PN 64 per component group), which loses words
# but never files a video under the wrong patient.
IDENTIFIER_LIMITS = {"patient_id": 64, "issuer_of_patient_id": 64, "accession_number": 16,
                     "study_id": 16}  # fmt: skip
_UID_SYNTAX = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _text(sidecar: dict[str, Any], key: str, limit: int = 64) -> str:
    """The sidecar's ``key`` as DICOM text: descriptive text is cut to ``limit`` characters."""
    value = sidecar.get(key)
    if value is None:
        return ""
    text = str(value).strip()
    if "\\" in text or any(ord(c) < 32 for c in text):
        raise VideoError(f"sidecar field {key!r} contains control characters or backslashes")
    return text[:limit]


def _identifier(sidecar: dict[str, Any], key: str) -> str:
    """The sidecar's identifier ``key``, refused (never cut) when longer than its VR allows."""
    text = _text(sidecar, key, limit=10_000)
    limit = IDENTIFIER_LIMITS[key]
    if len(text) > limit:
        raise VideoError(
            f"sidecar {key!r} has {len(text)} characters; at most {limit} are allowed "
            "(it is refused rather than cut short, which could name another record)"
        )
    return text


def _study_uid(sidecar: dict[str, Any]) -> str:
    """The sidecar's ``study_instance_uid``, refused unless a valid UID (PS3.5 9.1)."""
    uid = _text(sidecar, "study_instance_uid", limit=10_000)
    if uid and (len(uid) > 64 or not _UID_SYNTAX.fullmatch(uid)):
        raise VideoError(
            f"sidecar 'study_instance_uid' {uid[:80]!r} is not a valid UID "
            "(digits and dots, no leading zeros, at most 64 characters)"
        )
    return uid


def _study_moment(sidecar: dict[str, Any], start: dt.datetime) -> tuple[str, str]:
    """StudyDate and StudyTime: an existing study's own (``study_date``, ``study_time``,
    DICOM DA/TM, even when empty) when the video joins it, else the recording's start."""
    date = _text(sidecar, "study_date").replace("-", "")
    time = _text(sidecar, "study_time").replace(":", "")
    if "study_date" not in sidecar:
        if time:
            raise VideoError("sidecar 'study_time' needs 'study_date'")
        return start.strftime("%Y%m%d"), start.strftime("%H%M%S")
    if date and not re.fullmatch(r"\d{8}", date):
        raise VideoError(f"sidecar 'study_date' must be YYYYMMDD or YYYY-MM-DD, not {date!r}")
    if time and not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", time):
        raise VideoError(f"sidecar 'study_time' must be HHMMSS or HH:MM:SS, not {time!r}")
    return date, time


def _moment(sidecar: dict[str, Any], key: str) -> dt.datetime | None:
    raw = sidecar.get(key)
    if not raw:
        return None
    try:
        return dt.datetime.fromisoformat(str(raw))
    except ValueError as exc:
        raise VideoError(f"sidecar {key!r} is not an ISO date-time: {raw!r}") from exc


def _start(sidecar: dict[str, Any]) -> dt.datetime:
    return _moment(sidecar, "start") or _moment(sidecar, "start_time") or dt.datetime.now()


def validate_sidecar(sidecar: dict[str, Any]) -> dict[str, Any]:
    """Check the sidecar's required fields; returns it unchanged."""
    if not isinstance(sidecar, dict):
        raise VideoError("the sidecar must be a JSON object")
    if not _identifier(sidecar, "patient_id"):
        raise VideoError("sidecar lacks patient_id")
    for key in ("issuer_of_patient_id", "accession_number", "study_id"):
        _identifier(sidecar, key)
    _study_uid(sidecar)
    role = sidecar.get("camera_role", "field")
    if role not in CAMERA_ROLES:
        raise VideoError(f"camera_role must be one of {', '.join(CAMERA_ROLES)}, not {role!r}")
    if sidecar.get("sex") not in (None, "", "M", "F", "O"):
        raise VideoError("sex must be M, F or O")
    if sidecar.get("video_class", "field") not in VIDEO_CLASSES:
        raise VideoError(f"video_class must be one of {', '.join(VIDEO_CLASSES)}")
    _study_moment(sidecar, _start(sidecar))
    begun, ended = _moment(sidecar, "operation_start"), _moment(sidecar, "operation_end")
    if begun and ended and ended <= begun:
        raise VideoError("operation_end must be after operation_start")
    return sidecar


def wrap_header(facts: VideoFacts, sidecar: dict[str, Any], ts_uid: str) -> Dataset:
    """Every attribute but Pixel Data (also used to re-wrap a new stream under an old header)."""
    validate_sidecar(sidecar)
    role = sidecar.get("camera_role", "field")
    start = _start(sidecar)
    endoscope = role == "endoscope"
    ds = Dataset()
    ds.SOPClassUID = VIDEO_ENDOSCOPIC if endoscope else VIDEO_PHOTOGRAPHIC
    ds.SOPInstanceUID = generate_uid(UID_ROOT)
    ds.SpecificCharacterSet = "ISO_IR 192"
    # Patient
    ds.PatientName = _text(sidecar, "patient_name")
    ds.PatientID = _identifier(sidecar, "patient_id")
    if sidecar.get("issuer_of_patient_id"):
        ds.IssuerOfPatientID = _identifier(sidecar, "issuer_of_patient_id")
    ds.PatientBirthDate = _text(sidecar, "birth_date").replace("-", "")
    ds.PatientSex = _text(sidecar, "sex")
    # General Study: an existing study's own attributes when the video joins one (the intake
    # fills study_* from the index or the worklist), else a new study begun by the recording.
    ds.StudyInstanceUID = _study_uid(sidecar) or generate_uid(UID_ROOT)
    ds.StudyDate, ds.StudyTime = _study_moment(sidecar, start)
    ds.ReferringPhysicianName = _text(sidecar, "referring_physician")
    ds.StudyID = _identifier(sidecar, "study_id")
    ds.AccessionNumber = _identifier(sidecar, "accession_number")
    ds.StudyDescription = _text(
        sidecar, "study_description" if "study_description" in sidecar else "procedure"
    )
    ds.AdmittingDiagnosesDescription = _text(sidecar, "diagnosis")
    # General Series
    ds.Modality = "ES" if endoscope else "XC"
    ds.SeriesInstanceUID = generate_uid(UID_ROOT)
    ds.SeriesNumber = 1
    video_class = sidecar.get("video_class", "field")
    # The retention policy knows a safety recording by its Series Description.
    ds.SeriesDescription = f"{'safety video, ' if video_class == 'safety' else ''}{role} camera"
    ds.PerformingPhysicianName = _text(sidecar, "surgeon")
    ds.PerformedProcedureStepDescription = _text(sidecar, "procedure")
    begun, ended = _moment(sidecar, "operation_start"), _moment(sidecar, "operation_end")
    if begun:
        ds.PerformedProcedureStepStartDate = begun.strftime("%Y%m%d")
        ds.PerformedProcedureStepStartTime = begun.strftime("%H%M%S")
    if ended:
        ds.PerformedProcedureStepEndDate = ended.strftime("%Y%m%d")
        ds.PerformedProcedureStepEndTime = ended.strftime("%H%M%S")
    # General Equipment
    ds.Manufacturer = _text(sidecar, "manufacturer") or "imaging-cloud video intake"
    ds.InstitutionName = _text(sidecar, "hospital")
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", _text(sidecar, "applicant") or _text(sidecar, "surgeon"))
    block.add_new(0x02, "CS", role.upper())
    block.add_new(0x03, "CS", video_class.upper())  # FIELD | SAFETY (CS: 16 chars)
    # General Image / Acquisition, VL Image
    ds.InstanceNumber = 1
    ds.ContentDate = start.strftime("%Y%m%d")  # the recording's, whatever the study's date
    ds.ContentTime = start.strftime("%H%M%S")
    ds.AcquisitionDateTime = start.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = (
        "ISO_23008_2" if facts.video_codec == "hevc" else "ISO_14496_10"
    )
    ds.AcquisitionContextSequence = Sequence()
    ds.AnatomicRegionSequence = Sequence()  # type 2 for Video Endoscopic, empty = unknown
    # Image Pixel: as coded in the stream (PS3.5 8.2.7: consistent with the compressed data)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows = facts.height
    ds.Columns = facts.width
    main10 = ts_uid == HEVC_MAIN10
    ds.BitsAllocated = 16 if main10 else 8
    ds.BitsStored = 10 if main10 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    # Multi-frame and Cine
    fps = facts.frame_rate or 25.0
    ds.NumberOfFrames = facts.frame_count or round(fps * (facts.duration_s or 0)) or 1
    ds.FrameIncrementPointer = FRAME_TIME_TAG
    ds.FrameTime = f"{1000.0 / fps:.6g}"
    ds.CineRate = round(fps)
    ds.RecommendedDisplayFrameRate = round(fps)
    if facts.duration_s:
        ds.ActualFrameDuration = round(1000.0 / fps)
    ds.PreferredPlaybackSequencing = 0  # looping
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts_uid)
    meta.ImplementationClassUID = UID(UID_ROOT + "1")
    ds.file_meta = meta
    ds.set_original_encoding(False, True)
    return ds


def wrap_plan(path: str | Path) -> tuple[VideoFacts, str, bool]:
    """The recording's facts, its transfer syntax, and whether it must be remuxed to MP4."""
    facts = probe(path)
    encoding = dicom_encoding(facts)
    if not encoding.wrappable or encoding.transfer_syntax_uid is None:
        need = f"; transcode to {encoding.transcode_needed}" if encoding.transcode_needed else ""
        raise VideoError(f"cannot wrap without re-encoding: {encoding.reason}{need}")
    return facts, encoding.transfer_syntax_uid, encoding.remux_to_mp4


def remux_to_mp4(source: str | Path, target: str | Path) -> None:
    """Copy every video and audio stream of a MOV into an MP4 container (no re-encoding)."""
    import av

    with av.open(str(source)) as src, av.open(str(target), "w", format="mp4") as dst:
        streams = [s for s in src.streams if s.type in ("video", "audio")]
        mapping = {s.index: dst.add_stream_from_template(s) for s in streams}
        for packet in src.demux(streams):
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream.index]
            dst.mux(packet)


@contextmanager
def _payload(path: str | Path, remux: bool) -> Iterator[Path]:
    if not remux:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="video-remux-") as tmp:
        target = Path(tmp) / "remuxed.mp4"
        remux_to_mp4(path, target)
        yield target


def wrap(mp4_path: str | Path, sidecar: dict[str, Any]) -> Dataset:
    """Build a DICOM video object around an MP4 recording, in memory.

    Parameters
    ----------
    mp4_path
        An MP4 (or MOV / MPEG-TS) file with H.264 or HEVC video.
    sidecar
        patient_id (required), issuer_of_patient_id, patient_name, birth_date, sex,
        accession_number, study_instance_uid, procedure, diagnosis, surgeon, applicant,
        hospital, camera_role (panorama, field, endoscope), video_class (field, safety),
        start, operation_start, operation_end (ISO date-times); and, when the video joins an
        existing study, that study's study_date, study_time, study_description,
        referring_physician and study_id (else the start and the procedure stand in).

    Raises
    ------
    VideoError
        Unreadable file, bad sidecar, or a stream that no transfer syntax takes as is.
    """
    facts, ts_uid, remux = wrap_plan(mp4_path)
    ds = wrap_header(facts, sidecar, ts_uid)
    with _payload(mp4_path, remux) as payload:
        data = payload.read_bytes()
    ds.PixelData = encapsulate([data], has_bot=False)  # pads an odd length with one NUL
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _item(length: int) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, length)


def _copy(src: BinaryIO, dst: BinaryIO, progress: Callable[[int], None] | None) -> None:
    if progress is None:
        shutil.copyfileobj(src, dst, _CHUNK)
        return
    while chunk := src.read(_CHUNK):
        dst.write(chunk)
        progress(len(chunk))


def write(
    mp4_path: str | Path,
    sidecar: dict[str, Any],
    out_path: str | Path,
    progress: Callable[[int], None] | None = None,
) -> Dataset:
    """Wrap `mp4_path` into the DICOM file `out_path`, streaming the video bytes.

    Returns the header (without Pixel Data). `progress` is called with each chunk's size.
    """
    facts, ts_uid, remux = wrap_plan(mp4_path)
    ds = wrap_header(facts, sidecar, ts_uid)
    out = Path(out_path)
    with _payload(mp4_path, remux) as payload:
        size = payload.stat().st_size
        if size + (size % 2) > 0xFFFFFFFE:
            raise VideoError("recording larger than 4 GiB; a single fragment cannot hold it")
        with out.open("wb") as fh, payload.open("rb") as src:
            dcmwrite(fh, ds, enforce_file_format=True)
            # (7FE0,0010) OB, undefined length; empty Basic Offset Table; one fragment.
            fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
            fh.write(_item(0))
            fh.write(_item(size + (size % 2)))
            _copy(src, fh, progress)
            if size % 2:
                fh.write(b"\x00")
            fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    logger.info("wrapped video: %d bytes, transfer syntax %s", size, ts_uid)
    return ds
