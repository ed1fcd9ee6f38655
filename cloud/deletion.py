"""Deleting a study on request (a platform admin's ``delete`` permission): index rows first,
in one transaction, then the blobs no other row still references.

Retention-driven destruction (issue 6) will build on this with its policy and records.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.blobstore import BlobStore
from cloud.errors import InstanceNotFoundError
from cloud.models import (
    IngestConflict,
    Instance,
    InstanceMetadata,
    Patient,
    Report,
    Series,
    SeriesTier,
    Study,
    SurgicalVideo,
    VideoAnnotation,
)


@dataclass(frozen=True)
class DeletedStudy:
    study_instance_uid: str
    patient_id: str
    instances: int
    blobs_deleted: int


def delete_study(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    study_instance_uid: str,
    cold: BlobStore | None = None,
) -> DeletedStudy:
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
        if study is None:
            raise InstanceNotFoundError(f"study {study_instance_uid} is not in the archive")
        patient = session.get(Patient, study.patient_pk)
        series_pks = select(Series.pk).where(Series.study_pk == study.pk)
        instances = session.execute(
            select(Instance.pk, Instance.blob_key).where(Instance.series_pk.in_(series_pks))
        ).all()
        instance_pks = [pk for pk, _ in instances]
        bundles = list(
            session.scalars(
                select(SeriesTier.cold_key).where(
                    SeriesTier.series_pk.in_(series_pks), SeriesTier.cold_key != ""
                )
            )
        )
        session.execute(
            delete(InstanceMetadata).where(InstanceMetadata.instance_pk.in_(instance_pks))
        )
        session.execute(delete(Instance).where(Instance.pk.in_(instance_pks)))
        session.execute(delete(Series).where(Series.study_pk == study.pk))
        # Reports are patient data too (their citations go with them, ON DELETE CASCADE).
        session.execute(delete(Report).where(Report.study_instance_uid == study_instance_uid))
        # Surgical video rows; annotations, review links and viewings go with them (CASCADE).
        videos = select(SurgicalVideo.pk).where(
            SurgicalVideo.study_instance_uid == study_instance_uid
        )
        voice_notes = set(
            session.scalars(
                select(VideoAnnotation.voice_note_key).where(
                    VideoAnnotation.video_pk.in_(videos), VideoAnnotation.voice_note_key != ""
                )
            )
        )
        session.execute(
            delete(SurgicalVideo).where(SurgicalVideo.study_instance_uid == study_instance_uid)
        )
        session.delete(study)
        session.flush()
        remaining = session.scalar(
            select(func.count(Study.pk)).where(Study.patient_pk == study.patient_pk)
        )
        if patient is not None and not remaining:
            session.delete(patient)
        keys = {key for _, key in instances}
        still_used = set(
            session.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys)))
        ) | set(
            session.scalars(
                select(IngestConflict.received_blob_key).where(
                    IngestConflict.received_blob_key.in_(keys)
                )
            )
        )
        session.commit()
    # After the commit: a crash here leaves unreferenced blobs (found by a scrub), never
    # index rows pointing at missing blobs.
    orphaned = keys - still_used
    for key in orphaned:
        blobs.delete(key)
    for key in voice_notes:
        blobs.delete(key)
    for key in bundles:  # a series bundle holds this study's objects only
        (cold or blobs).delete(key)
    return DeletedStudy(
        study_instance_uid,
        patient.patient_id if patient is not None else "",
        len(instances),
        len(orphaned),
    )
