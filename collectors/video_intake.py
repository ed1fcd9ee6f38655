"""One recording in, one DICOM video object out: what every video intake route shares.

`prepare` probes the file, writes its conformance report, transcodes only what cannot be
stored as is (`collectors.video_transcode`), and wraps the result with `video_wrap.write`
into a Part-10 file in a work directory. A transcoded object says so in its header (ImageType
DERIVED\\PRIMARY, DerivationDescription); an untouched one keeps ORIGINAL and the recording's
exact bytes.

The watched folder, the gateway's ``POST /videos`` and the cloud's ``POST /api/videos`` also
share the sidecar reader (`load_sidecar`, precise errors), the file-name check
(`check_file_name`), `join_study` (a recording joining an existing study takes that
study's study-level and patient attributes) and `UploadSpool`, which writes a multipart
upload's video part straight to a file instead of holding gigabytes in memory; the two HTTP
routes then run the same `prepare_upload`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from collectors.video_conformance import check
from collectors.video_probe import VideoError, probe
from collectors.video_transcode import Progress, TranscodePlan, plan_transcode
from collectors.video_transcode import transcode as run_transcode
from collectors.video_wrap import validate_sidecar, write

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = [
    "SIDECAR_FIELDS",
    "VIDEO_SUFFIXES",
    "NotAVideoNameError",
    "PreparedVideo",
    "SidecarError",
    "UnsupportedUploadError",
    "UploadFormError",
    "UploadSpool",
    "UploadTooLargeError",
    "VideoError",
    "check_file_name",
    "join_study",
    "load_sidecar",
    "prepare",
    "prepare_upload",
]

VIDEO_SUFFIXES = (".mp4", ".mov")
SIDECAR_FIELDS = frozenset(
    {
        "patient_id",
        "issuer_of_patient_id",
        "patient_name",
        "birth_date",
        "sex",
        "accession_number",
        "study_instance_uid",
        "study_date",
        "study_time",
        "study_description",
        "referring_physician",
        "study_id",
        "procedure",
        "diagnosis",
        "surgeon",
        "applicant",
        "hospital",
        "camera_role",
        "video_class",
        "start",
        "start_time",
        "operation_start",
        "operation_end",
        "manufacturer",
    }
)
MAX_SIDECAR_BYTES = 64 * 1024
MAX_PART_HEADER_BYTES = 16 * 1024  # all header lines of one form part together
# What an existing study (the cloud's index, or a worklist item) decides when a video joins it.
STUDY_KEYS = (
    "study_instance_uid",
    "accession_number",
    "study_date",
    "study_time",
    "study_description",
    "referring_physician",
    "study_id",
)
PATIENT_KEYS = ("patient_id", "issuer_of_patient_id", "patient_name", "birth_date", "sex")
# Given by both, these must agree: a mismatch means the recording is not of that study.
_MUST_AGREE = ("patient_id", "issuer_of_patient_id", "study_instance_uid", "accession_number")


class SidecarError(VideoError):
    """The sidecar (or what a worklist gave) cannot describe the recording."""

    http_status = 422
    title = "Invalid sidecar"


class NotAVideoNameError(VideoError):
    """The upload's name is not that of an MP4 or MOV recording."""

    http_status = 415
    title = "Unsupported media type"


class UnsupportedUploadError(VideoError):
    """Not a ``multipart/form-data`` request."""

    http_status = 415
    title = "Unsupported media type"


class UploadFormError(VideoError):
    """A ``multipart/form-data`` body without the parts an upload needs, or damaged."""

    title = "Malformed upload"


class UploadTooLargeError(VideoError):
    http_status = 413
    title = "Request too large"


def check_file_name(name: str) -> str:
    """The bare name of an uploaded or dropped recording; path tricks are refused.

    No directories (``/``, ``\\``), no ``..``, no hidden or control-character names, and the
    suffix must be one of `VIDEO_SUFFIXES`.
    """
    if not name or len(name) > 255:
        raise VideoError("the file name is empty or longer than 255 characters")
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        raise VideoError("the file name contains control characters")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise VideoError(f"the file name {name!r} must be a plain name, without directories")
    if not name.lower().endswith(VIDEO_SUFFIXES):
        raise NotAVideoNameError(
            f"the file name {name!r} must end in {' or '.join(VIDEO_SUFFIXES)}"
        )
    return name


def load_sidecar(source: bytes | str | Path) -> dict[str, Any]:
    """A sidecar from JSON text or bytes, or from a ``.json`` file; VideoError says what is wrong.

    Unknown keys are refused (a typo such as ``patient-id`` would otherwise be silently
    dropped); required fields and formats are checked by `video_wrap.validate_sidecar`
    except ``patient_id``, which a worklist match may still fill (`prepare` checks it).
    """
    if isinstance(source, Path):
        try:
            if source.stat().st_size > MAX_SIDECAR_BYTES:
                raise SidecarError(
                    f"sidecar {source.name!r} is larger than {MAX_SIDECAR_BYTES} bytes"
                )
            raw: bytes | str = source.read_bytes()
        except OSError as exc:
            raise SidecarError(f"cannot read sidecar {source.name!r}: {exc.strerror}") from exc
    else:
        raw = source
    if len(raw) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"the sidecar is larger than {MAX_SIDECAR_BYTES} bytes")
    try:
        document = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise SidecarError("the sidecar is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise SidecarError(
            f"the sidecar is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    if not isinstance(document, dict):
        raise SidecarError(f"the sidecar must be a JSON object, not {type(document).__name__}")
    unknown = sorted(set(document) - SIDECAR_FIELDS)
    if unknown:
        raise SidecarError(
            f"the sidecar has unknown fields {unknown}; known: {', '.join(sorted(SIDECAR_FIELDS))}"
        )
    for key, value in document.items():
        if value is not None and not isinstance(value, str | int | float):
            raise SidecarError(f"sidecar field {key!r} must be a string")
    _check_formats(document)
    return document


def _check_formats(sidecar: Mapping[str, Any]) -> None:
    """Everything `validate_sidecar` checks, whether or not patient_id is there yet."""
    try:
        validate_sidecar({**sidecar, "patient_id": sidecar.get("patient_id") or "x"})
    except VideoError as exc:
        raise SidecarError(exc.detail) from exc


def join_study(sidecar: Mapping[str, Any], study: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar of a recording that joins an existing ``study`` (index or worklist item).

    The study decides the study-level attributes (`STUDY_KEYS`: a key it gives wins even when
    empty, so the video repeats exactly what the study holds) and the whole patient module
    (`PATIENT_KEYS`); for the rest the sidecar wins over what the study suggests: the
    procedure performed (Performed Procedure Step Description), surgeon, camera, start...
    An identifier the sidecar gives that differs from the study's (patient ID, study UID,
    accession) is refused: the recording would be filed under someone else. A study without
    a UID (a worklist item lacking one) still decides the rest; the wrapper makes the UID.
    """
    for key in _MUST_AGREE:
        given, known = _stripped(sidecar.get(key)), _stripped(study.get(key))
        if given and known and given != known:
            raise SidecarError(
                f"the sidecar's {key} {given!r} differs from the study's {known!r}; "
                "the recording is not of that study"
            )
    decided = {*STUDY_KEYS, *PATIENT_KEYS}
    joined = {  # what else the study suggests (a worklist's procedure, surgeon), under the sidecar
        key: value for key, value in study.items() if value not in (None, "") and key not in decided
    }
    joined.update(
        {
            key: value
            for key, value in sidecar.items()
            if value not in (None, "") and key not in decided
        }
    )
    joined.update({key: study[key] for key in STUDY_KEYS if study.get(key) is not None})
    joined.update({key: study[key] for key in PATIENT_KEYS if study.get(key) not in (None, "")})
    return joined


def _stripped(value: Any) -> str:
    return "" if value is None else str(value).strip()


@dataclass
class PreparedVideo:
    """A wrapped recording waiting in the work directory, and what was done to it."""

    dicom_path: Path
    header: Dataset  # every attribute but Pixel Data
    transcoded: bool
    report: dict[str, Any]
    command: list[str] = field(default_factory=list)

    @property
    def transfer_syntax_uid(self) -> str:
        return str(self.header.file_meta.TransferSyntaxUID)

    def read_bytes(self) -> bytes:
        return self.dicom_path.read_bytes()

    def discard(self) -> None:
        self.dicom_path.unlink(missing_ok=True)


def prepare(
    path: str | Path,
    sidecar: Mapping[str, Any],
    workdir: str | Path,
    transcode: bool = True,
    *,
    display_name: str | None = None,
    progress: Progress | None = None,
) -> PreparedVideo:
    """Probe, check, transcode if needed, and wrap ``path`` into a DICOM file in ``workdir``.

    Parameters
    ----------
    path
        The recording (MP4, MOV or MPEG-TS).
    sidecar
        The fields `video_wrap.wrap` takes; ``patient_id`` is required.
    workdir
        Where the DICOM file (and a transcoded MP4, removed afterwards) are written.
    transcode
        False refuses a recording that would need re-encoding instead of re-encoding it.
    display_name
        The name to show in the report instead of the (temporary) path.

    Raises
    ------
    VideoError
        Unreadable video, bad sidecar, or a stream needing a transcode that is not allowed
        or that failed.
    """
    try:
        sidecar = validate_sidecar(dict(sidecar))
    except VideoError as exc:
        raise SidecarError(exc.detail) from exc
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = display_name or Path(path).name
    facts = probe(path)
    if facts.container in ("mp4", "mov"):
        check_boxes_complete(Path(path))
    report = check(facts).as_dict()
    report["file"] = name
    report["facts"]["path"] = name
    plan = plan_transcode(facts)
    report["transcoded"] = plan is not None
    report["transcode"] = plan.as_dict() if plan else None
    if plan is not None and not transcode:
        raise VideoError("the recording needs transcoding: " + "; ".join(plan.reasons))
    stem = uuid.uuid4().hex
    dicom_path = workdir / f"{stem}.dcm"
    command: list[str] = []
    source = Path(path)
    transcoded_path = workdir / f"{stem}-transcoded.mp4"
    try:
        if plan is not None:
            result = run_transcode(source, transcoded_path, facts, plan, progress)
            command = result.command
            source = transcoded_path
            after = check(probe(source)).as_dict()
            after["file"] = after["facts"]["path"] = f"{name} (transcoded)"
            report["after_transcode"] = after
            shown = {str(path): "INPUT", str(transcoded_path): "OUTPUT.mp4"}
            report["transcode"]["command"] = [
                Path(command[0]).name,
                *(shown.get(part, part) for part in command[1:]),
            ]
        header = write(source, sidecar, dicom_path)
        if plan is not None:
            _mark_derived(dicom_path, header, plan)
    except BaseException:
        dicom_path.unlink(missing_ok=True)
        raise
    finally:
        transcoded_path.unlink(missing_ok=True)
    return PreparedVideo(dicom_path, header, plan is not None, report, command)


def check_boxes_complete(path: Path) -> None:
    """Refuse an MP4/MOV whose top-level boxes do not end exactly at the end of the file.

    A recording cut short in transfer still opens when its ``moov`` comes first (faststart),
    and would be stored with frames missing; its last box (``mdat``) then claims more bytes
    than the file has.
    """
    size = path.stat().st_size
    position = 0
    with path.open("rb") as handle:
        while position < size:
            handle.seek(position)
            head = handle.read(16)
            if len(head) < 8:
                raise VideoError(
                    f"the recording is truncated: {size - position} stray bytes at the end"
                )
            length = int.from_bytes(head[:4], "big")
            kind = head[4:8].decode("latin-1")
            if length == 1:
                if len(head) < 16:
                    raise VideoError("the recording is truncated inside a box header")
                length = int.from_bytes(head[8:16], "big")
            elif length == 0:  # the box runs to the end of the file
                return
            if length < 8:
                raise VideoError(f"the recording has a damaged {kind!r} box")
            if position + length > size:
                missing = position + length - size
                raise VideoError(
                    f"the recording is truncated: box {kind!r} lacks its last {missing} bytes"
                )
            position += length


def _mark_derived(dicom_path: Path, header: Dataset, plan: TranscodePlan) -> None:
    """Rewrite the header of a transcoded object: DERIVED, with how it was derived.

    `video_wrap.write` states ORIGINAL; the header is re-encoded in front of the same Pixel
    Data bytes (one more copy, negligible next to the transcode itself).
    """
    written = io.BytesIO()
    dcmwrite(written, header, enforce_file_format=True)
    old_header = written.getvalue()
    header.ImageType = ["DERIVED", "PRIMARY"]
    header.DerivationDescription = plan.derivation
    header.LossyImageCompression = "01"
    replacement = dicom_path.with_name(dicom_path.name + ".new")
    with dicom_path.open("rb") as src:
        if src.read(len(old_header)) != old_header:
            raise RuntimeError("the wrapped header is not where it was written")
        with replacement.open("wb") as out:
            dcmwrite(out, header, enforce_file_format=True)
            shutil.copyfileobj(src, out, 8 * 1024 * 1024)
    os.replace(replacement, dicom_path)


class UploadSpool:
    """Parses a ``multipart/form-data`` upload as it streams in (python-multipart).

    The ``file`` part goes straight to a file in ``workdir`` (never held in memory); the
    ``sidecar`` part, at most 64 KiB, is kept as bytes. Feed chunks with `feed`, then call
    `finish`. `close` removes the file.
    """

    def __init__(self, content_type: str, workdir: Path, limit: int) -> None:
        from python_multipart.multipart import MultipartParser, parse_options_header

        media, params = parse_options_header(content_type)
        if media != b"multipart/form-data":
            raise UnsupportedUploadError("send multipart/form-data with parts 'file' and 'sidecar'")
        boundary = params.get(b"boundary")
        if not boundary:
            raise UnsupportedUploadError("the multipart/form-data content type has no boundary")
        workdir.mkdir(parents=True, exist_ok=True)
        self._workdir = workdir
        self._limit = limit
        self._received = 0
        self.video_path: Path | None = None
        self.file_name: str | None = None
        self.sidecar: bytes | None = None
        self._part_name = ""
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._header_bytes = 0
        self._sink: BinaryIO | None = None
        self._small: bytearray | None = None
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    def feed(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._received > self._limit:
            raise UploadTooLargeError(f"uploads are limited to {self._limit} bytes")
        try:
            self._parser.write(chunk)
        except VideoError:
            raise
        except Exception as exc:  # python-multipart's parse errors
            raise UploadFormError(f"malformed multipart/form-data body: {exc}") from exc

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except Exception as exc:
            raise UploadFormError(f"malformed multipart/form-data body: {exc}") from exc
        if self._sink is not None:  # the body ended inside the file part
            self._sink.close()
            self._sink = None
            raise UploadFormError("the multipart/form-data body ends inside the 'file' part")
        if self.video_path is None:
            raise UploadFormError("the upload has no 'file' part")

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        if self.video_path is not None:
            self.video_path.unlink(missing_ok=True)

    # python-multipart callbacks
    def _part_begin(self) -> None:
        self._headers = {}
        self._part_name = ""
        self._header_bytes = 0

    def _count_header(self, size: int) -> None:
        """Refuse a part whose headers grow past `MAX_PART_HEADER_BYTES` (they are in memory)."""
        self._header_bytes += size
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise UploadFormError(f"a form part's headers exceed {MAX_PART_HEADER_BYTES} bytes")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._part_name == "file":
            if self.video_path is not None:
                raise UploadFormError("the upload has more than one 'file' part")
            raw_name = options.get(b"filename")
            if raw_name is None:
                raise UploadFormError("the 'file' part has no filename")
            self.file_name = check_file_name(raw_name.decode("utf-8", "replace"))
            self.video_path = self._workdir / f"{uuid.uuid4().hex}{Path(self.file_name).suffix}"
            self._sink = self.video_path.open("xb")
        elif self._part_name == "sidecar":
            if self.sidecar is not None:
                raise UploadFormError("the upload has more than one 'sidecar' part")
            self._small = bytearray()
        else:
            raise UploadFormError(
                f"unexpected form part {self._part_name!r}; send 'file' and 'sidecar'"
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._sink is not None:
            self._sink.write(data[start:end])
        elif self._small is not None:
            self._small += data[start:end]
            if len(self._small) > MAX_SIDECAR_BYTES:
                raise SidecarError(f"the sidecar is larger than {MAX_SIDECAR_BYTES} bytes")

    def _part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        elif self._small is not None:
            self.sidecar = bytes(self._small)
            self._small = None


async def receive_upload(
    chunks: AsyncIterator[bytes], content_type: str, workdir: Path, limit: int
) -> UploadSpool:
    """Spool a streamed ``multipart/form-data`` body; the caller closes the result."""
    spool = UploadSpool(content_type, workdir, limit)
    try:
        async for chunk in chunks:
            spool.feed(chunk)
        spool.finish()
    except BaseException:
        spool.close()
        raise
    return spool


def prepare_upload(
    upload: UploadSpool,
    workdir: Path,
    hand_over: Callable[[bytes], T],
    *,
    study: Mapping[str, Any] | None = None,
) -> tuple[PreparedVideo, T]:
    """An upload's sidecar, prepared recording and hand-over: what every HTTP route does.

    ``hand_over`` gets the Part-10 bytes (the cloud's ``archive.store``, the gateway's sink);
    the wrapped file is removed afterwards whatever happens. With ``study`` (an existing
    study to join, `join_study`) the sidecar part may be omitted.

    Returns the prepared video (its header and report; the file is gone) and what
    ``hand_over`` returned.
    """
    if upload.sidecar is None and study is None:
        raise SidecarError("the upload has no 'sidecar' part")
    sidecar = load_sidecar(upload.sidecar) if upload.sidecar is not None else {}
    if study is not None:
        sidecar = join_study(sidecar, study)
    if upload.video_path is None or upload.file_name is None:
        raise UploadFormError("the upload has no 'file' part")
    prepared = prepare(upload.video_path, sidecar, workdir, display_name=upload.file_name)
    try:
        result = hand_over(prepared.read_bytes())
    finally:
        prepared.discard()
    return prepared, result
