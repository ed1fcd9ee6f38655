"""Ingest on SQLite and PostgreSQL: durable, indexed, idempotent, conflicts kept apart."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select

from cloud.archive import Archive
from cloud.errors import DuplicateInstanceError, InvalidDatasetError, SOPClassMismatchError
from cloud.models import IngestConflict, Instance
from cloud.query import Query
from imaging_cloud.synthetic import StudySpec, ct_series, to_part10


def _count(archive: Archive) -> int:
    with archive.engine.connect() as connection:
        return int(connection.scalar(select(func.count(Instance.pk))) or 0)


def test_store_keeps_the_exact_bytes_and_indexes_them(
    archive: Archive, ct_files: list[bytes]
) -> None:
    outcomes = [archive.store(f, source="test") for f in ct_files]
    assert not any(o.already_stored for o in outcomes)
    found = archive.locate(outcomes[0].study_instance_uid)
    assert len(found) == len(ct_files)
    by_uid = {s.sop_instance_uid: s for s in found}
    for outcome, data in zip(outcomes, ct_files, strict=True):
        assert archive.read(by_uid[outcome.sop_instance_uid]) == data


def test_same_object_twice_is_a_success_without_duplicate(
    archive: Archive, ct_files: list[bytes]
) -> None:
    archive.store(ct_files[0], source="test")
    again = archive.store(ct_files[0], source="test")
    assert again.already_stored
    assert _count(archive) == 1


def test_different_bytes_under_a_known_uid_are_a_recorded_conflict(
    archive: Archive, study: StudySpec
) -> None:
    original = next(ct_series(study, slices=1, size=16))
    first = to_part10(original)
    archive.store(first, source="test")
    original.SeriesDescription = "changed"
    second = to_part10(original)
    with pytest.raises(DuplicateInstanceError) as refused:
        archive.store(second, source="hospital-b")
    assert refused.value.http_status == 409
    stored = archive.locate(original.StudyInstanceUID)[0]
    assert archive.read(stored) == first  # unchanged
    with archive.engine.connect() as connection:
        conflict = connection.execute(select(IngestConflict)).one()
    assert conflict.received_sha256 == hashlib.sha256(second).hexdigest()
    assert archive.read_conflict(conflict.pk) == second  # kept for review (sealed at rest)


def test_refused_objects_leave_no_index_rows(archive: Archive, ct_files: list[bytes]) -> None:
    with pytest.raises(InvalidDatasetError):
        archive.store(ct_files[0][: len(ct_files[0]) // 2], source="test")
    with pytest.raises(SOPClassMismatchError):
        archive.store(ct_files[1], source="test", expected_sop_class_uid="1.2.3")
    assert _count(archive) == 0


def test_query_by_patient_and_date_range(archive: Archive, ct_files: list[bytes]) -> None:
    for data in ct_files:
        archive.store(data, source="test")
    match = archive.search(Query("study", {"PatientID": "PID-1", "StudyDate": "20250101-"}))
    assert len(match) == 1
    assert match[0].attributes["NumberOfStudyRelatedInstances"] == len(ct_files)
    assert match[0].attributes["ModalitiesInStudy"] == ["CT"]
    assert archive.search(Query("study", {"StudyDate": "-20241231"})) == []


def test_migrations_match_the_models(archive: Archive) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cloud.models import Base

    with archive.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_concurrent_senders_of_one_study_store_each_instance_once(
    archive: Archive, study: StudySpec
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    files = [to_part10(ds) for ds in ct_series(study, slices=24, size=16)]
    # Four senders, each sending every object: the races on patient, study, series and
    # instance rows must all resolve to one row each, and every call must succeed.
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda d: archive.store(d, source="race"), files * 4))
    assert len(outcomes) == 96
    assert sum(not o.already_stored for o in outcomes) == 24
    assert _count(archive) == 24
    assert len(archive.search(Query("study", {}))) == 1
