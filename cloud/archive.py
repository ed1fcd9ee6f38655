"""The archive as one object: ingest, search, locate and read, over an index and a blob store."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cloud import metadata
from cloud.access import AccessPolicy
from cloud.audit import AuditLog
from cloud.blobstore import BlobStore, open_blob_store
from cloud.crypto import AES256GCM, KeyEncryptionKeys, NoKeks, SealedBlobError, open_keks, unseal
from cloud.database import create_index_engine, migrate, session_factory, sqlite_url
from cloud.deletion import DeletedStudy, delete_study
from cloud.errors import BackendUnavailableError, InstanceNotFoundError, RestoreInProgressError
from cloud.hospitals import HospitalRegistry
from cloud.identity import UserDirectory
from cloud.ingest import Ingestor, StoreOutcome, is_sealed_key
from cloud.lifecycle_jobs import DONE, FAILED, InProcessQueue, JobQueue, JobRunner, Jobs
from cloud.models import IngestConflict, Instance, InstanceMetadata, Series, Study
from cloud.query import Match, Query, search
from cloud.reports import Reports
from cloud.study_keys import StudyKeys
from cloud.tiering import COLD, AccessTracker, Progress, Tiering, TieringError
from cloud.videos import VideoCatalogue
from cloud.volumes import REFRESH_SECONDS, VolumeSet, table_loader

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    """Where one archived instance lives and what a retriever needs to know about it."""

    pk: int
    series_pk: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int | None
    blob_key: str
    size_bytes: int  # of the plaintext Part-10 bytes, like the index's sha256
    encryption: str = ""  # "" (stored as received) or "aes256gcm" (sealed, cloud.crypto)
    tier: str = "hot"  # "cold": inside its series' cold bundle until restored (cloud.tiering)


_LOCATE_STUDY = (
    select(
        Instance.pk,
        Series.pk.label("series_pk"),
        Study.study_instance_uid,
        Series.series_instance_uid,
        Instance.sop_instance_uid,
        Instance.sop_class_uid,
        Instance.transfer_syntax_uid,
        Instance.number_of_frames,
        Instance.blob_key,
        Instance.size_bytes,
        Instance.encryption,
        Instance.tier,
    )
    .join(Series, Instance.series_pk == Series.pk)
    .join(Study, Series.study_pk == Study.pk)
    .where(Study.study_instance_uid == bindparam("study"))
    .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)
)
_LOCATE_SERIES = _LOCATE_STUDY.where(Series.series_instance_uid == bindparam("series"))
_LOCATE_INSTANCE = _LOCATE_SERIES.where(Instance.sop_instance_uid == bindparam("sop"))
_LOCATE_SOP = _LOCATE_STUDY.where(Instance.sop_instance_uid == bindparam("sop"))


_LOCATE_PK = (
    select(
        Instance.blob_key, Instance.encryption, Instance.sop_instance_uid, Study.study_instance_uid
    )
    .join(Series, Instance.series_pk == Series.pk)
    .join(Study, Series.study_pk == Study.pk)
    .where(Instance.pk == bindparam("pk"))
)


class Archive:
    """Facade over the index and the blob stores; safe to share between threads.

    ``keks`` are the key-encryption keys of the study data keys (``archive.keys``); with
    ``encrypt``, new objects are sealed at rest (`cloud.crypto`). Reads return the plaintext
    whatever an object's encryption, so stores written with and without it mix.

    ``cold_blobs`` is the cold tier (`cloud.tiering`); reading a cold instance starts a restore
    job and waits up to ``cold_read_wait_seconds`` for it, then answers
    `RestoreInProgressError` (HTTP 202 with the job's status URL). Jobs run on this process's
    threads unless the composition root hands the archive another queue (`use_job_queue`).
    """

    def __init__(
        self,
        engine: Engine,
        blobs: BlobStore,
        keks: KeyEncryptionKeys | None = None,
        *,
        encrypt: bool = False,
        cold_blobs: BlobStore | None = None,
        cold_read_wait_seconds: float = 10.0,
    ) -> None:
        if encrypt and keks is None:
            raise ValueError("encryption at rest needs key-encryption keys")
        self.engine = engine
        self.blobs = blobs
        self._sessions: sessionmaker[Session] = session_factory(engine)
        self.keys = StudyKeys(self._sessions, keks or NoKeks())
        self._ingestor = Ingestor(self._sessions, blobs, self.keys, encrypt=encrypt)
        self.hospitals = HospitalRegistry(self._sessions)
        self.users = UserDirectory(self._sessions)
        self.access = AccessPolicy(self._sessions)
        self.audit = AuditLog(self._sessions)
        self.reports = Reports(self._sessions)
        self.videos = VideoCatalogue(self._sessions)
        self.cold_blobs = cold_blobs if cold_blobs is not None else blobs
        self.tiering = Tiering(self._sessions, blobs, self.cold_blobs, self.keys)
        self.access_stats = AccessTracker(self._sessions)
        self.cold_read_wait_seconds = cold_read_wait_seconds
        self.jobs = Jobs(self._sessions)
        self.job_runner = JobRunner(self.jobs)
        self.job_runner.register("restore", self._restore_job)
        self._job_queue: JobQueue = InProcessQueue(self.job_runner)
        self._owned_stores: tuple[VolumeSet, ...] = ()  # the stores `open` made, closed with it

    @classmethod
    def open(
        cls,
        data_dir: Path,
        database_url: str = "",
        blob_url: str = "",
        *,
        encryption: bool = True,
        kek_url: str = "",
        replica_urls: Sequence[str] = (),
        cold_url: str = "",
        cold_read_wait_seconds: float = 10.0,
        volume_refresh_seconds: float = REFRESH_SECONDS,
    ) -> Archive:
        """Open (and migrate) the archive; empty URLs mean the embedded default in ``data_dir``
        (hot blobs in ``blobs/``, cold bundles in ``cold/``, KEKs in ``keys/kek``).
        ``encryption`` seals new objects; ``replica_urls`` are further copies of the hot store
        (`cloud.blob_replicas`). Each tier also spans the volumes added while serving
        (`cloud.volumes`), looked up again every ``volume_refresh_seconds``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_index_engine(database_url or sqlite_url(data_dir))
        migrate(engine)
        sessions = session_factory(engine)
        blobs = VolumeSet(
            open_blob_store(
                blob_url or f"file://{(data_dir / 'blobs').resolve()}", replicas=replica_urls
            ),
            table_loader(sessions, "hot"),
            refresh_seconds=volume_refresh_seconds,
        )
        cold = VolumeSet(
            open_blob_store(cold_url or f"file://{(data_dir / 'cold').resolve()}"),
            table_loader(sessions, "cold"),
            refresh_seconds=volume_refresh_seconds,
        )
        keks = open_keks(kek_url or f"file://{(data_dir / 'keys' / 'kek').resolve()}")
        archive = cls(
            engine,
            blobs,
            keks,
            encrypt=encryption,
            cold_blobs=cold,
            cold_read_wait_seconds=cold_read_wait_seconds,
        )
        archive._owned_stores = (blobs, cold)
        return archive

    @property
    def encrypts(self) -> bool:
        """Whether new objects are sealed at rest."""
        return self._ingestor.encrypt

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Sessions on the index, for the cloud services built beside the archive."""
        return self._sessions

    def submit_job(self, job_pk: int) -> None:
        """Hand a lifecycle job row (see `Jobs.create`) to the queue: threads or RQ."""
        self._job_queue.submit(job_pk)

    def use_job_queue(self, queue: JobQueue) -> None:
        """Send lifecycle jobs to ``queue`` (e.g. `cloud.lifecycle_jobs.RedisQueue`)."""
        previous, self._job_queue = self._job_queue, queue
        previous.close()

    def close(self) -> None:
        self._job_queue.close()
        for store in self._owned_stores:
            store.close()
        self.audit.close()  # ends open viewing sessions with their duration
        self.engine.dispose()

    def request_restore(self, study_instance_uid: str, requested_by: str = "") -> int:
        """Queue a restore of the study's cold series (joining one already queued); its job."""
        job_pk, new = self.jobs.create("restore", study_instance_uid, requested_by)
        if new:
            self._job_queue.submit(job_pk)
        return job_pk

    def _restore_job(self, study_instance_uid: str, progress: Progress) -> dict[str, object]:
        moved = self.tiering.restore_study(study_instance_uid, progress)
        self._ingestor.forget_cached_keys()
        return {"series": [m.as_dict() for m in moved]}

    def store(
        self,
        data: bytes,
        *,
        source: str,
        expected_sop_class_uid: str | None = None,
        expected_study_instance_uid: str | None = None,
        hospital_pk: int | None = None,
    ) -> StoreOutcome:
        """Ingest one Part-10 object (see `cloud.ingest.Ingestor.store`); an SR's report is
        then taken in (`cloud.reports.Reports.after_store`) and a video catalogued
        (`cloud.videos.VideoCatalogue.after_store`); neither ever fails the store."""
        outcome = self._ingestor.store(
            data,
            source=source,
            expected_sop_class_uid=expected_sop_class_uid,
            expected_study_instance_uid=expected_study_instance_uid,
            hospital_pk=hospital_pk,
        )
        self.reports.after_store(data, outcome.sop_class_uid, hospital_pk)
        self.videos.after_store(data, outcome.sop_class_uid, hospital_pk)
        return outcome

    def delete_study(self, study_instance_uid: str) -> DeletedStudy:
        """Remove a study from the index and its blobs, hot and cold (see `cloud.deletion`)."""
        deleted = delete_study(self._sessions, self.blobs, study_instance_uid, self.cold_blobs)
        self._ingestor.forget_cached_keys()  # the study's cached row keys are gone
        return deleted

    def update_study_details(self, study_instance_uid: str, description: str) -> None:
        """Correct the index's Study Description (the stored objects stay as received)."""
        with self._sessions() as session:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == study_instance_uid)
            )
            if study is None:
                raise InstanceNotFoundError(f"study {study_instance_uid} is not in the archive")
            study.study_description = description
            session.commit()

    def search(self, query: Query) -> list[Match]:
        try:
            with self._sessions() as session:
                return search(session, query)
        except OperationalError as exc:
            raise BackendUnavailableError(f"index database error: {exc.orig}") from exc

    def locate(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """The stored instances of a study, series or single instance, in series order."""
        # Every image request locates its instance: prebuilt statements, a plain connection.
        values = {"study": study_instance_uid}
        statement = _LOCATE_STUDY
        if series_instance_uid is not None:
            values["series"], statement = series_instance_uid, _LOCATE_SERIES
        if sop_instance_uid is not None:
            values["sop"] = sop_instance_uid
            statement = _LOCATE_INSTANCE if series_instance_uid is not None else _LOCATE_SOP
        with self.engine.connect() as connection:
            rows = connection.execute(statement, values)
            found = [StoredInstance(**row._mapping) for row in rows]
        if not found:
            raise InstanceNotFoundError(
                _describe(study_instance_uid, series_instance_uid, sop_instance_uid)
            )
        # A destroyed study is refused here, before a response starts streaming (HTTP 410).
        # For sealed ones this also fetches the data key every read will need (then cached).
        if any(stored.encryption for stored in found):
            self.keys.data_key(study_instance_uid)
        else:
            self.keys.check_not_destroyed(study_instance_uid)
        self.access_stats.touch({stored.series_pk for stored in found})
        if any(stored.tier == COLD for stored in found):
            self._wait_for_restore(study_instance_uid)
            return self.locate(study_instance_uid, series_instance_uid, sop_instance_uid)
        return found

    def _wait_for_restore(self, study_instance_uid: str) -> None:
        """Restore the study (a job), waiting up to ``cold_read_wait_seconds`` for it."""
        job_pk = self.request_restore(study_instance_uid, requested_by="read")
        job = self.jobs.wait(job_pk, self.cold_read_wait_seconds)
        if job.state == DONE:
            return
        if job.state == FAILED:
            raise TieringError(f"restore of study {study_instance_uid} failed: {job.error}")
        raise RestoreInProgressError(
            # First what a DIMSE peer must know: Error Comment keeps only 64 characters.
            f"restoring from cold storage (job {job_pk}), retry later: study "
            f"{study_instance_uid}, {job.done} of {job.total or '?'} series done",
            job_pk,
            retry_after_seconds=5,
        )

    def read(self, stored: StoredInstance) -> bytes:
        """The original Part-10 bytes, exactly as received (opened if sealed at rest)."""
        try:
            blob = self.blobs.get(stored.blob_key)
        except InstanceNotFoundError:
            # Tiered since it was located: bring it back rather than answer "not found".
            self._wait_for_restore(stored.study_instance_uid)
            blob = self.blobs.get(stored.blob_key)
        return self._plaintext(
            blob, stored.encryption, stored.study_instance_uid, stored.sop_instance_uid
        )

    def read_conflict(self, conflict_pk: int) -> bytes:
        """The object kept by an ingest conflict (`IngestConflict`), for review."""
        with self._sessions() as session:
            conflict = session.get(IngestConflict, conflict_pk)
            if conflict is None:
                raise InstanceNotFoundError(f"ingest conflict {conflict_pk} does not exist")
            key, sop_uid = conflict.received_blob_key, conflict.sop_instance_uid
            study_uid = session.scalar(
                select(Study.study_instance_uid)
                .join(Series, Series.study_pk == Study.pk)
                .join(Instance, Instance.series_pk == Series.pk)
                .where(Instance.sop_instance_uid == sop_uid)
            )
        encryption = AES256GCM if is_sealed_key(key) else ""
        if encryption and study_uid is None:
            raise InstanceNotFoundError(
                f"the instance conflict {conflict_pk} was about is gone, and its study key with it"
            )
        return self._plaintext(self.blobs.get(key), encryption, study_uid or "", sop_uid)

    def _plaintext(self, blob: bytes, encryption: str, study_uid: str, sop_uid: str) -> bytes:
        if not encryption:
            return blob
        if encryption != AES256GCM:
            raise SealedBlobError(f"instance {sop_uid} uses unknown encryption {encryption!r}")
        return unseal(self.keys.data_key(study_uid), blob, sop_uid)

    def read_dataset(self, stored: StoredInstance) -> Dataset:
        """The stored object parsed (pixel data included); pydicom's value warnings silenced,
        since the object passed validation at ingest."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(io.BytesIO(self.read(stored)))

    def metadata_json(self, stored: StoredInstance) -> str:
        """Cached DICOM JSON of one instance (bulk data as placeholder URIs)."""
        return self._metadata_by_pk(stored.pk, stored)

    def metadata_json_by_pk(self, instance_pk: int) -> str:
        """Cached DICOM JSON of the instance with this index key."""
        return self._metadata_by_pk(instance_pk, None)

    def _metadata_by_pk(self, instance_pk: int, stored: StoredInstance | None) -> str:
        # One session for the common case, a cache hit; the blob is looked up only on a miss.
        with self._sessions() as session:
            cached = session.get(InstanceMetadata, instance_pk)
            if cached is not None:
                return cached.dicom_json
            if stored is None:
                found = session.execute(_LOCATE_PK, {"pk": instance_pk}).first()
                if found is None:
                    raise InstanceNotFoundError(f"instance {instance_pk} is gone")
                blob_key, encryption, sop_uid, study_uid = found
            else:
                blob_key, encryption = stored.blob_key, stored.encryption
                sop_uid, study_uid = stored.sop_instance_uid, stored.study_instance_uid
        data = self._plaintext(self.blobs.get(blob_key), encryption, study_uid, sop_uid)
        text = metadata.metadata_json(data)
        try:
            with self._sessions() as session:
                session.merge(InstanceMetadata(instance_pk=instance_pk, dicom_json=text))
                session.commit()
        except OperationalError:
            logger.warning("metadata cache write failed; serving uncached", exc_info=True)
        return text


def _describe(study: str, series: str | None, sop: str | None) -> str:
    if sop:
        return f"instance {sop} of series {series} in study {study} is not in the archive"
    if series:
        return f"series {series} of study {study} is not in the archive"
    return f"study {study} is not in the archive"
