"""Phases and key steps of a surgical recording, their voice notes, and the title page.

An annotation marks a span of the video (seconds from its start) as a *phase* (e.g. 分离胆囊三角)
or a *step* within one, with what was seen and done: tissue, instrument, action, whether it
followed the guideline (compliance) and a free note. A spoken note, recorded in the browser,
is kept as a blob in the archive's hot store under ``voice-notes/<sha256>``; study deletion
(`cloud.deletion`) removes those keys with the study, and deleting or replacing a note removes
its blob once no other annotation points at the same bytes. Two notes of identical bytes share
one blob, so "is it still referenced?" and "write it / point at it" must not interleave: a
process-wide lock (`_VOICE_NOTE_BLOBS`) makes each of them one step (see `_drop_if_unused`).

Each annotation carries a ``version`` (its ``updated_at`` in microseconds since the epoch, made
strictly increasing per annotation) for optimistic concurrency: a change sent with the version
it was based on (HTTP ``If-Match``) is refused with `AnnotationChangedError` (412) when someone
else changed or removed the annotation meanwhile; one sent without it simply wins.

The title page (procedure, applicant, diagnosis, notes) lives on the catalogue row
(`cloud.models.SurgicalVideo`); corrections change the row, never the stored DICOM object.
Everything here refuses bad input with `InvalidAnnotationError` (HTTP 422) naming the field.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.blobstore import BlobStore
from cloud.database import as_utc
from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.models import Hospital, SurgicalVideo, VideoAnnotation

KINDS = ("phase", "step")
VOICE_NOTE_TYPES = frozenset({"audio/webm", "audio/ogg", "audio/mp4", "audio/mpeg", "audio/wav"})
_TYPE_ALIASES = {"audio/x-wav": "audio/wav", "audio/wave": "audio/wav", "audio/mp3": "audio/mpeg"}
MAX_VOICE_NOTE_BYTES = 10 * 1024 * 1024
# Room for rounding between the player's clock and the container's stated duration.
DURATION_SLACK_S = 1.0
SHORT_LIMIT = 128  # label, tissue, instrument, action: the columns' width
LONG_LIMIT = 8000  # compliance, note
TITLE_PAGE_LIMITS = {"procedure": 128, "applicant": 128, "diagnosis": 256, "notes": LONG_LIMIT}


class InvalidAnnotationError(ArchiveError):
    """An annotation or title-page value that cannot be kept as sent."""

    http_status = 422
    title = "Invalid annotation"


class UnsupportedVoiceNoteError(ArchiveError):
    http_status = 415
    title = "Unsupported voice note type"


class VoiceNoteTooLargeError(ArchiveError):
    http_status = 413
    title = "Voice note too large"


class AnnotationChangedError(ArchiveError):
    """The annotation is no longer the version the change was based on."""

    http_status = 412
    title = "Precondition failed"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICK = timedelta(microseconds=1)
# Held while deciding whether a voice-note blob is still referenced and deleting it, and while
# writing a blob and committing the annotation that points at it; see `_drop_if_unused`.
_VOICE_NOTE_BLOBS = threading.Lock()


def version_of(updated_at: datetime) -> str:
    """The annotation's version: its last change in microseconds since the epoch."""
    return str((as_utc(updated_at) - _EPOCH) // _TICK)


def _next_moment(previous: datetime) -> datetime:
    """Now, or just after ``previous``: two changes in one microsecond still differ."""
    return max(datetime.now(UTC), as_utc(previous) + _TICK)


@dataclass(frozen=True)
class AnnotationFields:
    """What a client sends for one annotation (no id, author or times: those are ours)."""

    kind: str
    start: float
    end: float
    label: str
    tissue: str = ""
    instrument: str = ""
    action: str = ""
    compliance: str = ""
    note: str = ""


@dataclass(frozen=True)
class VideoFacts:
    """A catalogue row as plain values, safe to use after its session closed."""

    pk: int
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    duration_s: float | None
    procedure: str
    applicant: str
    diagnosis: str
    surgeon: str
    hospital: str
    operation_date: str
    operation_minutes: float | None
    notes: str

    def title_page(self) -> dict[str, Any]:
        return {
            "procedure": self.procedure,
            "applicant": self.applicant,
            "hospital": self.hospital,
            "surgeon": self.surgeon,
            "diagnosis": self.diagnosis,
            "operationDate": self.operation_date,
            "operationMinutes": self.operation_minutes,
            "notes": self.notes,
        }


def _clean(value: str, field: str, limit: int, *, multiline: bool) -> str:
    text = value.strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, possible in JSON
        raise InvalidAnnotationError(f"{field} is not valid Unicode text") from exc
    allowed = "\n\t\r" if multiline else ""
    if any(ord(c) < 32 and c not in allowed for c in text):
        raise InvalidAnnotationError(f"{field} contains control characters")
    if len(text) > limit:
        raise InvalidAnnotationError(f"{field} is {len(text)} characters long; at most {limit}")
    return text


def validate(fields: AnnotationFields, duration_s: float | None) -> AnnotationFields:
    """The annotation with its texts trimmed, or `InvalidAnnotationError` saying what is wrong:
    kind phase|step, 0 <= start < end (<= the video's duration + 1 s when known), a label."""
    if fields.kind not in KINDS:
        raise InvalidAnnotationError(f"kind must be 'phase' or 'step', not {fields.kind!r}")
    for name, value in (("start", fields.start), ("end", fields.end)):
        if not math.isfinite(value):
            raise InvalidAnnotationError(f"{name} must be a finite number of seconds")
    if fields.start < 0:
        raise InvalidAnnotationError(f"start must be 0 or more seconds, not {fields.start}")
    if fields.end <= fields.start:
        raise InvalidAnnotationError(f"end ({fields.end} s) must be after start ({fields.start} s)")
    if duration_s is not None and fields.end > duration_s + DURATION_SLACK_S:
        raise InvalidAnnotationError(
            f"end ({fields.end} s) is beyond the end of the video ({duration_s} s)"
        )
    label = _clean(fields.label, "label", SHORT_LIMIT, multiline=False)
    if not label:
        raise InvalidAnnotationError("label must not be empty")
    return AnnotationFields(
        kind=fields.kind,
        start=round(float(fields.start), 3),
        end=round(float(fields.end), 3),
        label=label,
        tissue=_clean(fields.tissue, "tissue", SHORT_LIMIT, multiline=False),
        instrument=_clean(fields.instrument, "instrument", SHORT_LIMIT, multiline=False),
        action=_clean(fields.action, "action", SHORT_LIMIT, multiline=False),
        compliance=_clean(fields.compliance, "compliance", LONG_LIMIT, multiline=True),
        note=_clean(fields.note, "note", LONG_LIMIT, multiline=True),
    )


def voice_note_type(content_type: str) -> str:
    """The stored media type of an uploaded note (parameters such as ``codecs`` dropped)."""
    base = content_type.split(";")[0].strip().lower()
    base = _TYPE_ALIASES.get(base, base)
    if base not in VOICE_NOTE_TYPES:
        raise UnsupportedVoiceNoteError(
            f"a voice note must be one of {', '.join(sorted(VOICE_NOTE_TYPES))}, "
            f"not {content_type or '(no Content-Type)'}"
        )
    return base


def annotation_json(row: VideoAnnotation, sop_instance_uid: str) -> dict[str, Any]:
    voice = (
        f"/api/videos/{sop_instance_uid}/annotations/{row.pk}/voice-note"
        if row.voice_note_key
        else None
    )
    return {
        "id": row.pk,
        "kind": row.kind,
        "start": row.start_s,
        "end": row.end_s,
        "label": row.label,
        "tissue": row.tissue,
        "instrument": row.instrument,
        "action": row.action,
        "compliance": row.compliance,
        "note": row.note,
        "voiceNoteUrl": voice,
        "author": row.author,
        "createdAt": as_utc(row.created_at).isoformat(),
        "updatedAt": as_utc(row.updated_at).isoformat(),
        "version": version_of(row.updated_at),
    }


class VideoAnnotations:
    """Annotations, voice notes and the title page of the catalogued videos."""

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore) -> None:
        self._sessions = sessions
        self._blobs = blobs

    # --- the video -------------------------------------------------------------------------

    def video(self, sop_instance_uid: str) -> VideoFacts:
        """The catalogued video, or `InstanceNotFoundError`."""
        with self._sessions() as session:
            found = session.execute(
                select(SurgicalVideo, Hospital.hospital_id)
                .outerjoin(Hospital, SurgicalVideo.hospital_pk == Hospital.pk)
                .where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
            ).first()
        if found is None:
            raise InstanceNotFoundError(f"video {sop_instance_uid} is not in the catalogue")
        row, hospital_id = found
        return VideoFacts(
            pk=row.pk,
            sop_instance_uid=row.sop_instance_uid,
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            sop_class_uid=row.sop_class_uid,
            duration_s=row.duration_s,
            procedure=row.procedure,
            applicant=row.applicant,
            diagnosis=row.diagnosis,
            surgeon=row.surgeon,
            hospital=row.institution_name or hospital_id or "",
            operation_date=row.operation_date,
            operation_minutes=row.operation_minutes,
            notes=row.notes,
        )

    def update_title_page(self, sop_instance_uid: str, changes: dict[str, str]) -> VideoFacts:
        """Correct procedure, applicant, diagnosis or notes on the catalogue row."""
        cleaned: dict[str, str] = {}
        for field, value in changes.items():
            limit = TITLE_PAGE_LIMITS.get(field)
            if limit is None:
                raise InvalidAnnotationError(
                    f"the title page's editable fields are {', '.join(TITLE_PAGE_LIMITS)}"
                )
            cleaned[field] = _clean(value, field, limit, multiline=field == "notes")
        with self._sessions() as session:
            row = session.scalar(
                select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
            )
            if row is None:
                raise InstanceNotFoundError(f"video {sop_instance_uid} is not in the catalogue")
            for field, value in cleaned.items():
                setattr(row, field, value)
            session.commit()
        return self.video(sop_instance_uid)

    # --- annotations -----------------------------------------------------------------------

    def list(self, video: VideoFacts) -> list[dict[str, Any]]:
        """The video's annotations in time order (ties: phases before their steps)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(VideoAnnotation)
                .where(VideoAnnotation.video_pk == video.pk)
                .order_by(VideoAnnotation.start_s, VideoAnnotation.kind, VideoAnnotation.pk)
            ).all()
            return [annotation_json(row, video.sop_instance_uid) for row in rows]

    def create(self, video: VideoFacts, fields: AnnotationFields, author: str) -> dict[str, Any]:
        checked = validate(fields, video.duration_s)
        now = datetime.now(UTC)
        with self._sessions() as session:
            row = VideoAnnotation(
                video_pk=video.pk,
                kind=checked.kind,
                start_s=checked.start,
                end_s=checked.end,
                label=checked.label,
                tissue=checked.tissue,
                instrument=checked.instrument,
                action=checked.action,
                compliance=checked.compliance,
                note=checked.note,
                author=author[:128],
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.commit()
            return annotation_json(row, video.sop_instance_uid)

    def update(
        self,
        video: VideoFacts,
        annotation_id: int,
        fields: AnnotationFields,
        if_match: str | None = None,
    ) -> dict[str, Any]:
        """Replace the annotation's content; its author and voice note stay. With
        ``if_match`` (a version), only if the annotation is still that version."""
        checked = validate(fields, video.duration_s)
        with self._sessions() as session:
            row = self._row(session, video, annotation_id)
            seen = self._expect(row, if_match)
            changed = session.execute(
                update(VideoAnnotation)
                .where(VideoAnnotation.pk == row.pk, VideoAnnotation.updated_at == seen)
                .values(
                    kind=checked.kind,
                    start_s=checked.start,
                    end_s=checked.end,
                    label=checked.label,
                    tissue=checked.tissue,
                    instrument=checked.instrument,
                    action=checked.action,
                    compliance=checked.compliance,
                    note=checked.note,
                    updated_at=_next_moment(seen),
                )
                .execution_options(synchronize_session=False)
            )
            if _rowcount(changed) != 1:  # changed between our read and our write
                session.rollback()
                if if_match is not None:
                    raise AnnotationChangedError(_changed(annotation_id))
                return self.update(video, annotation_id, fields)  # unconditional: last wins
            session.commit()
            return self.get(video, annotation_id)

    def delete(self, video: VideoFacts, annotation_id: int, if_match: str | None = None) -> None:
        """Remove the annotation (with ``if_match``: only if still that version), and its
        voice note's blob when nothing else points at it."""
        with self._sessions() as session:
            row = self._row(session, video, annotation_id)
            seen = self._expect(row, if_match)
            key = row.voice_note_key
            condition = [VideoAnnotation.pk == row.pk]
            if if_match is not None:
                condition.append(VideoAnnotation.updated_at == seen)
            gone = session.execute(
                delete(VideoAnnotation)
                .where(*condition)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(gone) != 1:
                session.rollback()
                if if_match is not None:
                    raise AnnotationChangedError(_changed(annotation_id))
                raise InstanceNotFoundError(
                    f"video {video.sop_instance_uid} has no annotation {annotation_id}"
                )
            session.commit()
        self._drop_if_unused(key)

    @staticmethod
    def _expect(row: VideoAnnotation, if_match: str | None) -> datetime:
        """The row's ``updated_at``, after checking it is the version the client expects."""
        if if_match is not None and version_of(row.updated_at) != if_match:
            raise AnnotationChangedError(_changed(row.pk))
        return row.updated_at

    def get(self, video: VideoFacts, annotation_id: int) -> dict[str, Any]:
        with self._sessions() as session:
            return annotation_json(self._row(session, video, annotation_id), video.sop_instance_uid)

    # --- voice notes -----------------------------------------------------------------------

    def put_voice_note(
        self, video: VideoFacts, annotation_id: int, data: bytes, content_type: str
    ) -> dict[str, Any]:
        """Keep a recorded note (replacing any earlier one) and point the annotation at it."""
        media_type = voice_note_type(content_type)
        if not data:
            raise InvalidAnnotationError("the voice note is empty")
        if len(data) > MAX_VOICE_NOTE_BYTES:
            raise VoiceNoteTooLargeError(
                f"a voice note may be at most {MAX_VOICE_NOTE_BYTES} bytes, not {len(data)}"
            )
        with self._sessions() as session:
            self._row(session, video, annotation_id)  # 404 before writing anything
        key = f"voice-notes/{hashlib.sha256(data).hexdigest()}"
        with _VOICE_NOTE_BLOBS:  # no deletion of this blob between our write and our commit
            if not self._blobs.exists(key):
                self._blobs.put(key, data)
            with self._sessions() as session:
                row = self._row(session, video, annotation_id)
                previous = row.voice_note_key
                row.voice_note_key, row.voice_note_type = key, media_type
                row.updated_at = _next_moment(row.updated_at)
                session.commit()
                answer = annotation_json(row, video.sop_instance_uid)
        if previous and previous != key:
            self._drop_if_unused(previous)
        return answer

    def voice_note(self, video: VideoFacts, annotation_id: int) -> tuple[bytes, str]:
        with self._sessions() as session:
            row = self._row(session, video, annotation_id)
            key, media_type = row.voice_note_key, row.voice_note_type
        if not key:
            raise InstanceNotFoundError(f"annotation {annotation_id} has no voice note")
        return self._blobs.get(key), media_type

    def _drop_if_unused(self, key: str) -> None:
        """Delete the blob if no annotation points at it any more.

        Without the lock, a note of the same bytes being saved at the same moment would find
        the blob present (so not write it), we would count no reference (its commit not yet
        made) and delete the blob, and the new annotation would point at nothing. Under the
        lock the count and the deletion are one step against "write, then commit": the count
        either sees the committed reference or precedes the write, which then recreates the
        blob. (One HTTP process per node serves these routes; nodes sharing one hot store
        and one database would need a database lock instead.)"""
        if not key:
            return
        with _VOICE_NOTE_BLOBS:
            with self._sessions() as session:
                users = session.scalar(
                    select(func.count(VideoAnnotation.pk)).where(
                        VideoAnnotation.voice_note_key == key
                    )
                )
            if not users:
                self._blobs.delete(key)

    @staticmethod
    def _row(session: Session, video: VideoFacts, annotation_id: int) -> VideoAnnotation:
        row = session.get(VideoAnnotation, annotation_id)
        if row is None or row.video_pk != video.pk:
            raise InstanceNotFoundError(
                f"video {video.sop_instance_uid} has no annotation {annotation_id}"
            )
        return row


def _changed(annotation_id: int) -> str:
    return (
        f"annotation {annotation_id} was changed or removed since you read it; "
        "reload it and apply your change again"
    )


def _rowcount(result: Any) -> int:
    count: int = result.rowcount
    return count
