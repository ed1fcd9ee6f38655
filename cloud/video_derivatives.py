"""Replacing an HD surgical recording by its standard-definition copy, as the retention policy
says (``downgrade_to_sd_after_days`` of a video class in ``config/retention.toml``).

DICOM wants a new SOP Instance UID when the pixel data change, so the SD copy is a new
instance in the same study and series: Image Type DERIVED\\PRIMARY, a Derivation Description
saying why, and a Source Image Sequence naming the HD original. It is stored like any object
(and so catalogued, `cloud.videos`, with ``derived_from_uid`` naming the HD original); then, in
one transaction, the catalogue's annotations, review links, review comments and viewings move
from the HD row to the SD row (with the title-page corrections made over the API) and the HD
row and index entry are deleted; its blob goes last, when no other row still uses it. Audited.

Safety:

* a study under legal hold (`StudyLifecycle.legal_hold`) is never due, and the hold is checked
  again in the transaction that deletes the HD instance;
* the HD row is claimed first by a conditional update of ``definition`` from ``HD`` to
  `CLAIMED` (``H>S``): only the run that changed it goes on, so two runs never make two copies;
* a failure after the SD copy was stored deletes that copy and releases the claim (unless
  another run finished the job meanwhile); a claimed row whose SD copy is already stored (a
  crash between the store and the final transaction) is finished by the next pass instead
  of being copied again. A claim whose run died before storing stays until released
  (`release_claims`, ``imaging-cloud video downgrade --release-claims``).

The pixels are not this module's business (cloud may not import collectors): the caller passes
an `SdMaker` that writes the SD Part-10 file (`imaging_cloud.video_processing_cli.make_sd_copy`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from cloud.archive import Archive
from cloud.errors import ArchiveError
from cloud.models import (
    IngestConflict,
    Instance,
    InstanceMetadata,
    ReviewComment,
    ReviewTaskVideo,
    Study,
    StudyLifecycle,
    SurgicalVideo,
    VideoAnnotation,
    VideoViewing,
)
from cloud.retention_policy import Actor, Policy, load_policy, utc_today

logger = logging.getLogger(__name__)

UID_ROOT = "1.2.826.0.1.3680043.10.1370."  # the project's root (collectors.video_wrap)
SD_DEFINITION = "SD"
HD_DEFINITION = "HD"
CLAIMED = "H>S"  # an HD row a downgrade is working on (the column is String(4))
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


class SdMaker(Protocol):
    """Writes the SD Part-10 copy of a stored HD video object into ``folder``; its path.

    ``read`` returns the original Part-10 bytes (call it once, and drop them as soon as the
    stream is on disk); ``identify`` gives the SD header (the original's header with the SD
    stream's attributes, no Pixel Data) its new identity and must be applied before writing.
    """

    def __call__(
        self, read: Callable[[], bytes], identify: Callable[[Dataset], Dataset], folder: Path
    ) -> Path: ...


class LegalHoldError(ArchiveError):
    """The study went under legal hold while its video was being downgraded."""

    http_status = 409
    title = "Legal hold"


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
    claimed: bool = False  # an earlier run claimed it: finish it if its SD copy is stored


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
    sop_instance_uid: str | None = None,
) -> list[DueVideo]:
    """HD videos of a class with ``downgrade_to_sd_after_days`` (``older_than_days`` instead
    of the class's days, if given) whose operation (else catalogue) date is at least that old,
    and claimed ones (an interrupted run). Classes without the key are never due, studies
    under legal hold neither. ``sop_instance_uid``: only that video."""
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
        held = (
            select(Study.study_instance_uid)
            .join(StudyLifecycle, StudyLifecycle.study_pk == Study.pk)
            .where(StudyLifecycle.legal_hold.is_(True))
        )
        statement = (
            select(SurgicalVideo)
            .where(
                SurgicalVideo.definition.in_((HD_DEFINITION, CLAIMED)),
                SurgicalVideo.video_class.in_(list(days_by_class)),
                SurgicalVideo.study_instance_uid.not_in(held),
            )
            .order_by(SurgicalVideo.pk)
        )
        if sop_instance_uid is not None:
            statement = statement.where(SurgicalVideo.sop_instance_uid == sop_instance_uid)
        rows = session.scalars(statement).all()
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
                row.definition == CLAIMED,
            )
        )
        if limit is not None and len(due) >= limit:
            break
    return due


def derive_sd_header(sd: Dataset, original: Dataset, after_days: int) -> Dataset:
    """Give the SD object (``original``'s header around an SD stream) its own identity.
    ``original`` may be ``sd`` itself (its identity is read before it is replaced)."""
    source = Dataset()
    source.ReferencedSOPClassUID = original.SOPClassUID
    source.ReferencedSOPInstanceUID = original.SOPInstanceUID
    number = original.get("InstanceNumber")
    sd.SOPInstanceUID = generate_uid(UID_ROOT)
    if hasattr(sd, "file_meta"):
        sd.file_meta.MediaStorageSOPInstanceUID = UID(sd.SOPInstanceUID)
    sd.ImageType = ["DERIVED", "PRIMARY"]
    sd.DerivationDescription = (
        f"downgraded to standard definition after {after_days} days (retention policy)"
    )
    sd.SourceImageSequence = Sequence([source])
    sd.LossyImageCompression = "01"
    sd.InstanceNumber = int(number) + 1 if number not in (None, "") else 2
    now = datetime.now(UTC)
    sd.InstanceCreationDate = now.strftime("%Y%m%d")
    sd.InstanceCreationTime = now.strftime("%H%M%S")
    return sd


def _held(session: Session, study_instance_uid: str) -> bool:
    return bool(
        session.scalar(
            select(StudyLifecycle.legal_hold)
            .join(Study, Study.pk == StudyLifecycle.study_pk)
            .where(Study.study_instance_uid == study_instance_uid)
        )
    )


def _claim(archive: Archive, video_pk: int) -> bool:
    """Take the HD row for this run: True only for the run whose update changed it."""
    with archive.sessions() as session:
        result = session.execute(
            update(SurgicalVideo)
            .where(SurgicalVideo.pk == video_pk, SurgicalVideo.definition == HD_DEFINITION)
            .values(definition=CLAIMED)
        )
        session.commit()
    return int(getattr(result, "rowcount", 0) or 0) == 1


def _release(session: Session, video_pk: int) -> bool:
    result = session.execute(
        update(SurgicalVideo)
        .where(SurgicalVideo.pk == video_pk, SurgicalVideo.definition == CLAIMED)
        .values(definition=HD_DEFINITION)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def _stored_copy(archive: Archive, hd_uid: str) -> str | None:
    """The SOP Instance UID of an SD copy already stored for ``hd_uid`` (a crashed run's)."""
    with archive.sessions() as session:
        return session.scalar(
            select(SurgicalVideo.sop_instance_uid)
            .where(
                SurgicalVideo.derived_from_uid == hd_uid,
                SurgicalVideo.definition == SD_DEFINITION,
            )
            .order_by(SurgicalVideo.pk)
            .limit(1)
        )


def downgrade_video(
    archive: Archive, due: DueVideo, make_sd: SdMaker, actor: Actor | None = None
) -> Downgraded | None:
    """Store the SD copy of one recording, move its catalogue links, delete the HD original.

    None when another run holds the video (or has finished it). Raises `LegalHoldError` when
    the study went under hold meanwhile (the HD original stays, the copy is removed).
    """
    who = actor or Actor(name="video-downgrade")
    if not due.claimed and _claim(archive, due.video_pk):
        return _make_and_finish(archive, due, make_sd, who)
    # Claimed by an earlier or a concurrent run: finish it if its copy is stored, never copy.
    resumed = _stored_copy(archive, due.sop_instance_uid)
    if resumed is None:
        return None  # another run is still making the copy (or died before storing it)
    stored = archive.locate(due.study_instance_uid, None, resumed)[0]
    logger.info("video %s: finishing an interrupted downgrade to %s", due.sop_instance_uid, resumed)
    return _finish(archive, replace(due, claimed=True), resumed, stored.size_bytes, 0, who)


def _make_and_finish(
    archive: Archive, due: DueVideo, make_sd: SdMaker, who: Actor
) -> Downgraded | None:
    sd_uid: str | None = None
    try:
        stored = archive.locate(due.study_instance_uid, None, due.sop_instance_uid)[0]
        rows: list[int] = []

        def identify(header: Dataset) -> Dataset:
            rows.append(int(header.Rows))
            return derive_sd_header(header, header, due.after_days)

        with archive.sessions() as session:
            hospital_pk = session.scalar(
                select(SurgicalVideo.hospital_pk).where(SurgicalVideo.pk == due.video_pk)
            )
        with tempfile.TemporaryDirectory(prefix="video-sd-") as tmp:
            path = make_sd(lambda: archive.read(stored), identify, Path(tmp))
            data = path.read_bytes()  # archive.store takes bytes: the SD copy, once
        outcome = archive.store(data, source="video-downgrade", hospital_pk=hospital_pk)
        sd_uid = outcome.sop_instance_uid
        size = len(data)
        del data
        done = _finish(archive, due, sd_uid, size, stored.size_bytes, who, rows[0] if rows else 0)
    except BaseException:
        _abandon(archive, due.video_pk, sd_uid)
        raise
    return done  # None: another run finished the job with this copy meanwhile


def _abandon(archive: Archive, video_pk: int, sd_uid: str | None) -> None:
    """Undo a failed run: delete the SD copy it stored and release the claim, in one
    transaction, unless another run has finished the job with that copy meanwhile."""
    try:
        with archive.sessions() as session:
            if not _release(session, video_pk):
                session.commit()
                return  # the HD row is gone: another run finished with this copy; keep it
            key = _delete_index_rows(session, sd_uid) if sd_uid else None
            shared = key is not None and _shared(session, key)
            session.commit()
        if key is not None and not shared:
            archive.blobs.delete(key)
    except Exception:  # the original error matters more; the claim is then released by hand
        logger.exception("video row %d: the failed downgrade could not be undone", video_pk)


def _finish(
    archive: Archive,
    due: DueVideo,
    sd_uid: str,
    sd_bytes: int,
    original_bytes: int,
    who: Actor,
    sd_height: int = 0,
) -> Downgraded | None:
    """Move the catalogue links to the SD row and delete the HD row and index entry, in one
    transaction (legal hold checked in it); then the HD blob and the audit entry. None when
    the HD row is no longer claimed (another run finished it)."""
    with archive.sessions() as session:
        old = session.scalar(
            select(SurgicalVideo)
            .where(SurgicalVideo.pk == due.video_pk, SurgicalVideo.definition == CLAIMED)
            .with_for_update()
        )
        if old is None:
            return None
        if _held(session, due.study_instance_uid):
            raise LegalHoldError(
                f"study {due.study_instance_uid} is under legal hold: {due.sop_instance_uid} "
                "is kept in HD"
            )
        new = session.scalar(select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sd_uid))
        if new is None:
            raise LookupError(f"the SD copy {sd_uid} is not catalogued")
        moved = _move_links(session, old, new)
        patient_id = old.patient_id
        sd_height = sd_height or new.height
        gone = session.execute(
            delete(SurgicalVideo).where(
                SurgicalVideo.pk == due.video_pk, SurgicalVideo.definition == CLAIMED
            )
        )
        if int(getattr(gone, "rowcount", 0) or 0) != 1:
            session.rollback()
            return None
        key = _delete_index_rows(session, due.sop_instance_uid)
        shared = key is not None and _shared(session, key)
        session.commit()
    blob_deleted = key is not None and not shared
    if blob_deleted and key is not None:
        archive.blobs.delete(key)
    detail = {
        "original": due.sop_instance_uid,
        "sd": sd_uid,
        "video_class": due.video_class,
        "after_days": due.after_days,
        "original_bytes": original_bytes,
        "sd_bytes": sd_bytes,
        "blob_deleted": blob_deleted,
        "moved": moved,
        "resumed": due.claimed,
    }
    archive.audit.append(who.entry("video_downgrade", due.study_instance_uid, patient_id, detail))
    logger.info(
        "video %s downgraded to SD as %s (%d -> %d bytes)",
        due.sop_instance_uid,
        sd_uid,
        original_bytes,
        sd_bytes,
    )
    return Downgraded(
        due.sop_instance_uid,
        sd_uid,
        due.study_instance_uid,
        due.height,
        sd_height,
        original_bytes,
        sd_bytes,
        moved,
    )


def _move_links(session: Session, old: SurgicalVideo, new: SurgicalVideo) -> dict[str, int]:
    """Annotations, review links and comments and viewings of ``old`` now belong to ``new``
    (which takes over the title-page fields and is marked SD, derived from ``old``)."""
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
            update(table).where(table.video_pk == old.pk).values(video_pk=new.pk)
        )
        moved[label] = int(getattr(result, "rowcount", 0) or 0)
    session.flush()
    return moved


def move_catalogue_links(archive: Archive, old_pk: int, new_uid: str) -> dict[str, int]:
    """`_move_links` in a transaction of its own, and the old row removed. Counts moved."""
    with archive.sessions() as session:
        old = session.get(SurgicalVideo, old_pk)
        new = session.scalar(select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == new_uid))
        if old is None or new is None:
            raise LookupError(f"video row {old_pk} or {new_uid} is not catalogued")
        moved = _move_links(session, old, new)
        session.delete(old)
        session.commit()
    return moved


def _delete_index_rows(session: Session, sop_instance_uid: str) -> str | None:
    """Delete one instance's index rows (and catalogue row) in ``session``; its blob key."""
    row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))
    if row is None:
        return None
    key = row.blob_key
    session.execute(delete(InstanceMetadata).where(InstanceMetadata.instance_pk == row.pk))
    session.execute(delete(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sop_instance_uid))
    session.delete(row)
    session.flush()
    return key


def _shared(session: Session, key: str) -> bool:
    """Whether another index row still references the blob ``key``."""
    return bool(
        session.scalar(select(func.count(Instance.pk)).where(Instance.blob_key == key))
        or session.scalar(
            select(func.count(IngestConflict.pk)).where(IngestConflict.received_blob_key == key)
        )
    )


def delete_instance(archive: Archive, sop_instance_uid: str) -> bool:
    """Remove one instance from the index, then its blob if no other row references it.

    The index goes first, in one transaction: a crash after it leaves an unreferenced blob
    (found by a scrub), never a row pointing at a missing blob. True if the blob was deleted.
    """
    with archive.sessions() as session:
        key = _delete_index_rows(session, sop_instance_uid)
        if key is None:
            return False
        shared = _shared(session, key)
        session.commit()
    if shared:
        return False
    archive.blobs.delete(key)
    return True


def release_claims(archive: Archive) -> list[str]:
    """Give back the claims of runs that died before storing their SD copy (call only when no
    downgrade is running); the SOP Instance UIDs released."""
    with archive.sessions() as session:
        copies = select(SurgicalVideo.derived_from_uid).where(
            SurgicalVideo.definition == SD_DEFINITION
        )
        rows = session.scalars(
            select(SurgicalVideo).where(
                SurgicalVideo.definition == CLAIMED,
                SurgicalVideo.sop_instance_uid.not_in(copies),
            )
        ).all()
        for row in rows:
            row.definition = HD_DEFINITION
        session.commit()
        return [row.sop_instance_uid for row in rows]


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
    (one bad recording does not stop the others; it stays HD and is tried again next pass).
    Videos another run is working on are skipped."""
    due = due_for_sd(
        archive, policy=policy, today=today, older_than_days=older_than_days, limit=limit
    )
    done: list[Downgraded] = []
    failed: list[tuple[str, str]] = []
    for index, video in enumerate(due):
        try:
            result = downgrade_video(archive, video, make_sd)
            if result is not None:
                done.append(result)
        except Exception as exc:  # reported, and the next video is tried
            logger.exception("video %s not downgraded", video.sop_instance_uid)
            failed.append((video.sop_instance_uid, str(exc)[:500]))
        if progress is not None:
            progress(index + 1, len(due))
    return done, failed
