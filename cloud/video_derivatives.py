"""Replacing an HD surgical recording by its standard-definition copy, as the retention policy
says (``downgrade_to_sd_after_days`` of a video class in ``config/retention.toml``).

DICOM wants a new SOP Instance UID when the pixel data change, so the SD copy is a new
instance in the same study and series: Image Type DERIVED\\PRIMARY, a Derivation Description
saying why, and a Source Image Sequence naming the HD original. It is stored like any object
(and so catalogued, `cloud.videos`), the catalogue's annotations, review links, review
comments and viewings move from the HD row to the SD row, the title-page corrections made over
the API go with them, and only then is the HD instance deleted (index row, then its blob when
no other row still uses it), audited.

The pixels are not this module's business (cloud may not import collectors): the caller passes
``make_sd``, which turns the original object into one with the same header and an SD stream
(`collectors.video_downgrade.rewrap_like` over `downgrade_to_sd`, wired in `imaging_cloud`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import delete, func, select, update

from cloud.archive import Archive
from cloud.models import (
    IngestConflict,
    Instance,
    InstanceMetadata,
    ReviewComment,
    ReviewTaskVideo,
    SurgicalVideo,
    VideoAnnotation,
    VideoViewing,
)
from cloud.retention_policy import Actor, Policy, load_policy, utc_today

logger = logging.getLogger(__name__)

UID_ROOT = "1.2.826.0.1.3680043.10.1370."  # the project's root (collectors.video_wrap)
SD_DEFINITION = "SD"
SdMaker = Callable[[Dataset], Dataset]
Progress = Callable[[int, int | None], None]
# Title-page fields users may have corrected on the HD row; the SD row takes them over.
_CARRIED_FIELDS = (
    "hospital_pk",
    "procedure",
    "diagnosis",
    "surgeon",
    "applicant",
    "camera_role",
    "video_class",
    "notes",
)


@dataclass(frozen=True)
class DueVideo:
    """An HD recording whose class says it should now be kept in SD only."""

    video_pk: int
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    video_class: str
    since: date  # the operation date, or the day it was catalogued
    after_days: int
    height: int


@dataclass(frozen=True)
class Downgraded:
    original_uid: str
    sd_uid: str
    study_instance_uid: str
    original_height: int
    sd_height: int
    original_bytes: int
    sd_bytes: int
    moved: dict[str, int]


def _since(video: SurgicalVideo) -> date:
    day = video.operation_date
    if len(day) == 8 and day.isdigit():
        try:
            return date(int(day[:4]), int(day[4:6]), int(day[6:]))
        except ValueError:
            pass
    created = video.created_at
    return created.date() if created is not None else utc_today()


def due_for_sd(
    archive: Archive,
    *,
    policy: Policy | None = None,
    today: date | None = None,
    older_than_days: int | None = None,
    limit: int | None = None,
) -> list[DueVideo]:
    """HD videos of a class with ``downgrade_to_sd_after_days`` (``older_than_days`` instead
    of the class's days, if given) whose operation (else catalogue) date is at least that old.
    Classes without the key are never due."""
    chosen = policy or load_policy()
    day = today or utc_today()
    days_by_class = {
        name: older_than_days if older_than_days is not None else c.downgrade_to_sd_after_days
        for name, c in chosen.classes.items()
        if c.downgrade_to_sd_after_days is not None
    }
    if not days_by_class:
        return []
    with archive.sessions() as session:
        rows = session.scalars(
            select(SurgicalVideo)
            .where(
                SurgicalVideo.definition == "HD",
                SurgicalVideo.video_class.in_(list(days_by_class)),
            )
            .order_by(SurgicalVideo.pk)
        ).all()
    due: list[DueVideo] = []
    for row in rows:
        after = days_by_class[row.video_class]
        since = _since(row)
        if since + timedelta(days=after) > day:
            continue
        due.append(
            DueVideo(
                row.pk,
                row.sop_instance_uid,
                row.study_instance_uid,
                row.series_instance_uid,
                row.video_class,
                since,
                after,
                row.height,
            )
        )
        if limit is not None and len(due) >= limit:
            break
    return due


def derive_sd_header(sd: Dataset, original: Dataset, after_days: int) -> Dataset:
    """Give the SD object (``original``'s header around an SD stream) its own identity."""
    sd.SOPInstanceUID = generate_uid(UID_ROOT)
    sd.file_meta.MediaStorageSOPInstanceUID = sd.SOPInstanceUID
    sd.ImageType = ["DERIVED", "PRIMARY"]
    sd.DerivationDescription = (
        f"downgraded to standard definition after {after_days} days (retention policy)"
    )
    source = Dataset()
    source.ReferencedSOPClassUID = original.SOPClassUID
    source.ReferencedSOPInstanceUID = original.SOPInstanceUID
    sd.SourceImageSequence = Sequence([source])
    sd.LossyImageCompression = "01"
    number = original.get("InstanceNumber")
    sd.InstanceNumber = int(number) + 1 if number not in (None, "") else 2
    now = datetime.now(UTC)
    sd.InstanceCreationDate = now.strftime("%Y%m%d")
    sd.InstanceCreationTime = now.strftime("%H%M%S")
    return sd


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def downgrade_video(
    archive: Archive, due: DueVideo, make_sd: SdMaker, actor: Actor | None = None
) -> Downgraded:
    """Store the SD copy of one recording, move its catalogue links, delete the HD original."""
    who = actor or Actor(name="video-downgrade")
    stored = archive.locate(due.study_instance_uid, None, due.sop_instance_uid)[0]
    original = archive.read_dataset(stored)
    sd = derive_sd_header(make_sd(original), original, due.after_days)
    data = part10(sd)
    with archive.sessions() as session:
        hospital_pk = session.scalar(
            select(SurgicalVideo.hospital_pk).where(SurgicalVideo.pk == due.video_pk)
        )
    outcome = archive.store(data, source="video-downgrade", hospital_pk=hospital_pk)
    moved = move_catalogue_links(archive, due.video_pk, outcome.sop_instance_uid)
    patient_id = str(original.get("PatientID", "") or "")
    blob_deleted = delete_instance(archive, due.sop_instance_uid)
    detail = {
        "original": due.sop_instance_uid,
        "sd": outcome.sop_instance_uid,
        "video_class": due.video_class,
        "after_days": due.after_days,
        "original_bytes": stored.size_bytes,
        "sd_bytes": len(data),
        "blob_deleted": blob_deleted,
        "moved": moved,
    }
    archive.audit.append(who.entry("video_downgrade", due.study_instance_uid, patient_id, detail))
    logger.info(
        "video %s downgraded to SD as %s (%d -> %d bytes)",
        due.sop_instance_uid,
        outcome.sop_instance_uid,
        stored.size_bytes,
        len(data),
    )
    return Downgraded(
        due.sop_instance_uid,
        outcome.sop_instance_uid,
        due.study_instance_uid,
        due.height,
        int(sd.Rows),
        stored.size_bytes,
        len(data),
        moved,
    )


def move_catalogue_links(archive: Archive, old_pk: int, new_uid: str) -> dict[str, int]:
    """Annotations, review links and comments and viewings of the video ``old_pk`` now
    belong to the row of ``new_uid`` (which takes over the title-page fields and is marked SD,
    derived from the old one); the old row is removed. Counts of what moved."""
    with archive.sessions() as session:
        old = session.get(SurgicalVideo, old_pk)
        new = session.scalar(select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == new_uid))
        if old is None or new is None:
            raise LookupError(f"video row {old_pk} or {new_uid} is not catalogued")
        for name in _CARRIED_FIELDS:
            setattr(new, name, getattr(old, name))
        new.definition = SD_DEFINITION
        new.derived_from_uid = old.sop_instance_uid
        moved = {}
        for label, table in (
            ("annotations", VideoAnnotation),
            ("review_tasks", ReviewTaskVideo),
            ("review_comments", ReviewComment),
            ("viewings", VideoViewing),
        ):
            result = session.execute(
                update(table).where(table.video_pk == old_pk).values(video_pk=new.pk)
            )
            moved[label] = int(getattr(result, "rowcount", 0) or 0)
        session.flush()
        session.delete(old)
        session.commit()
    return moved


def delete_instance(archive: Archive, sop_instance_uid: str) -> bool:
    """Remove one instance from the index, then its blob if no other row references it.

    The index goes first, in one transaction: a crash after it leaves an unreferenced blob
    (found by a scrub), never a row pointing at a missing blob. True if the blob was deleted.
    """
    with archive.sessions() as session:
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
        if row is None:
            return False
        key = row.blob_key
        session.execute(delete(InstanceMetadata).where(InstanceMetadata.instance_pk == row.pk))
        session.execute(
            delete(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
        )
        session.delete(row)
        session.flush()
        shared = session.scalar(
            select(func.count(Instance.pk)).where(Instance.blob_key == key)
        ) or session.scalar(
            select(func.count(IngestConflict.pk)).where(IngestConflict.received_blob_key == key)
        )
        session.commit()
    if shared:
        return False
    archive.blobs.delete(key)
    return True


def downgrade_due(
    archive: Archive,
    make_sd: SdMaker,
    *,
    policy: Policy | None = None,
    today: date | None = None,
    older_than_days: int | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> tuple[list[Downgraded], list[tuple[str, str]]]:
    """Downgrade every due recording; what was done, and (uid, error) for those that failed
    (one bad recording does not stop the others; it stays HD and is tried again next pass)."""
    due = due_for_sd(
        archive, policy=policy, today=today, older_than_days=older_than_days, limit=limit
    )
    done: list[Downgraded] = []
    failed: list[tuple[str, str]] = []
    for index, video in enumerate(due):
        try:
            done.append(downgrade_video(archive, video, make_sd))
        except Exception as exc:  # reported, and the next video is tried
            logger.exception("video %s not downgraded", video.sop_instance_uid)
            failed.append((video.sop_instance_uid, str(exc)[:500]))
        if progress is not None:
            progress(index + 1, len(due))
    return done, failed
