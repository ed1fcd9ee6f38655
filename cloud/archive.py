"""The archive as one object: ingest, search, locate and read, over an index and a blob store."""

from __future__ import annotations

import io
import logging
import warnings
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
from cloud.database import create_index_engine, migrate, session_factory, sqlite_url
from cloud.deletion import DeletedStudy, delete_study
from cloud.errors import BackendUnavailableError, InstanceNotFoundError
from cloud.hospitals import HospitalRegistry
from cloud.identity import UserDirectory
from cloud.ingest import Ingestor, StoreOutcome
from cloud.models import Instance, InstanceMetadata, Series, Study
from cloud.query import Match, Query, search

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    """Where one archived instance lives and what a retriever needs to know about it."""

    pk: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number_of_frames: int | None
    blob_key: str
    size_bytes: int


_LOCATE_STUDY = (
    select(
        Instance.pk,
        Study.study_instance_uid,
        Series.series_instance_uid,
        Instance.sop_instance_uid,
        Instance.sop_class_uid,
        Instance.transfer_syntax_uid,
        Instance.number_of_frames,
        Instance.blob_key,
        Instance.size_bytes,
    )
    .join(Series, Instance.series_pk == Series.pk)
    .join(Study, Series.study_pk == Study.pk)
    .where(Study.study_instance_uid == bindparam("study"))
    .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)
)
_LOCATE_SERIES = _LOCATE_STUDY.where(Series.series_instance_uid == bindparam("series"))
_LOCATE_INSTANCE = _LOCATE_SERIES.where(Instance.sop_instance_uid == bindparam("sop"))
_LOCATE_SOP = _LOCATE_STUDY.where(Instance.sop_instance_uid == bindparam("sop"))


class Archive:
    """Facade over the index and the blob store; safe to share between threads."""

    def __init__(self, engine: Engine, blobs: BlobStore) -> None:
        self.engine = engine
        self.blobs = blobs
        self._sessions: sessionmaker[Session] = session_factory(engine)
        self._ingestor = Ingestor(self._sessions, blobs)
        self.hospitals = HospitalRegistry(self._sessions)
        self.users = UserDirectory(self._sessions)
        self.access = AccessPolicy(self._sessions)
        self.audit = AuditLog(self._sessions)

    @classmethod
    def open(cls, data_dir: Path, database_url: str = "", blob_url: str = "") -> Archive:
        """Open (and migrate) the archive; empty URLs mean the embedded default in ``data_dir``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_index_engine(database_url or sqlite_url(data_dir))
        migrate(engine)
        blobs = open_blob_store(blob_url or f"file://{(data_dir / 'blobs').resolve()}")
        return cls(engine, blobs)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """Sessions on the index, for the cloud services built beside the archive."""
        return self._sessions

    def close(self) -> None:
        self.audit.close()  # ends open viewing sessions with their duration
        self.engine.dispose()

    def store(
        self,
        data: bytes,
        *,
        source: str,
        expected_sop_class_uid: str | None = None,
        expected_study_instance_uid: str | None = None,
        hospital_pk: int | None = None,
    ) -> StoreOutcome:
        """Ingest one Part-10 object (see `cloud.ingest.Ingestor.store`)."""
        return self._ingestor.store(
            data,
            source=source,
            expected_sop_class_uid=expected_sop_class_uid,
            expected_study_instance_uid=expected_study_instance_uid,
            hospital_pk=hospital_pk,
        )

    def delete_study(self, study_instance_uid: str) -> DeletedStudy:
        """Remove a study from the index and its blobs (see `cloud.deletion`)."""
        deleted = delete_study(self._sessions, self.blobs, study_instance_uid)
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
            found = [StoredInstance(*row) for row in connection.execute(statement, values)]
        if not found:
            raise InstanceNotFoundError(
                _describe(study_instance_uid, series_instance_uid, sop_instance_uid)
            )
        return found

    def read(self, stored: StoredInstance) -> bytes:
        """The original Part-10 bytes, exactly as received."""
        return self.blobs.get(stored.blob_key)

    def read_dataset(self, stored: StoredInstance) -> Dataset:
        """The stored object parsed (pixel data included); pydicom's value warnings silenced,
        since the object passed validation at ingest."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcmread(io.BytesIO(self.read(stored)))

    def metadata_json(self, stored: StoredInstance) -> str:
        """Cached DICOM JSON of one instance (bulk data as placeholder URIs)."""
        return self._metadata_by_pk(stored.pk, stored.blob_key)

    def metadata_json_by_pk(self, instance_pk: int) -> str:
        """Cached DICOM JSON of the instance with this index key."""
        return self._metadata_by_pk(instance_pk, None)

    def _metadata_by_pk(self, instance_pk: int, blob_key: str | None) -> str:
        # One session for the common case, a cache hit; the blob key is looked up only on a miss.
        with self._sessions() as session:
            cached = session.get(InstanceMetadata, instance_pk)
            if cached is not None:
                return cached.dicom_json
            if blob_key is None:
                blob_key = session.scalar(
                    select(Instance.blob_key).where(Instance.pk == instance_pk)
                )
        if blob_key is None:
            raise InstanceNotFoundError(f"instance {instance_pk} is gone")
        text = metadata.metadata_json(self.blobs.get(blob_key))
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
