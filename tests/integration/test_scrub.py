"""The scrub job on SQLite and PostgreSQL: damaged and missing copies found and repaired from
another replica, unrepairable damage reported (exit 2 through the CLI), cold bundles, ingest
conflicts, destroyed studies and orphan blobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.archive import Archive, StoredInstance
from cloud.blob_replicas import ReplicatedBlobStore
from cloud.blobstore import BlobStore, LocalBlobStore
from cloud.crypto import open_keks
from cloud.database import create_index_engine, migrate, sqlite_url
from cloud.errors import DuplicateInstanceError
from cloud.models import IngestConflict, Series, SeriesTier
from cloud.scrub import Scrubber
from cloud.volumes import VolumeSet
from imaging_cloud.scrub_cli import main as scrub_cli
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10


def make_archive(
    tmp_path: Path,
    database_url: str,
    blobs: BlobStore,
    *,
    encrypt: bool = True,
    cold_blobs: BlobStore | None = None,
) -> Archive:
    engine = create_index_engine(database_url or sqlite_url(tmp_path))
    migrate(engine)
    keks = open_keks(f"file://{tmp_path / 'keys' / 'kek'}")
    return Archive(engine, blobs, keks, encrypt=encrypt, cold_blobs=cold_blobs)


@pytest.fixture
def disks(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "disk1", tmp_path / "disk2"


@pytest.fixture(params=[True, False], ids=["sealed", "plain"])
def replicated(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str, disks: tuple[Path, Path]
) -> Iterator[Archive]:
    blobs = ReplicatedBlobStore([LocalBlobStore(disks[0]), LocalBlobStore(disks[1])])
    archive = make_archive(tmp_path, database_url, blobs, encrypt=request.param)
    yield archive
    archive.close()
    blobs.close()


def store_all(archive: Archive, files: list[bytes]) -> list[StoredInstance]:
    outcomes = [archive.store(data, source="test") for data in files]
    return archive.locate(outcomes[0].study_instance_uid)


def flip_a_byte(path: Path, offset: int = 300) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[offset] ^= 0x01
    path.write_bytes(bytes(damaged))


def other_study() -> StudySpec:
    return StudySpec(patient=PatientSpec(patient_id="PID-2", patient_name="Li^Na"))


def test_scrub_repairs_a_damaged_and_a_missing_copy_from_the_other_replica(
    replicated: Archive, disks: tuple[Path, Path], ct_files: list[bytes]
) -> None:
    stored = store_all(replicated, ct_files)
    assert Scrubber(replicated).run(limit=2).checked == 2
    damaged, missing = stored[0], stored[1]
    flip_a_byte(disks[0] / damaged.blob_key)
    (disks[1] / missing.blob_key).unlink()
    seen: list[tuple[int, int | None]] = []

    report = Scrubber(replicated, batch_size=2).run(lambda done, total: seen.append((done, total)))

    assert (report.checked, report.instances, report.ok) == (5, 5, 3)
    assert (report.damaged, report.missing, report.repaired, report.unrepairable) == (1, 1, 2, 0)
    assert report.exit_status == 0  # all repaired
    assert report.bytes_read >= sum(len(f) for f in ct_files) * 2 - len(ct_files[1])
    assert seen[-1] == (5, 5)
    problems = {(p.what, p.sop_instance_uid, p.replica, p.repaired) for p in report.problems}
    assert problems == {
        ("damaged", damaged.sop_instance_uid, f"file://{disks[0]}", True),
        ("missing", missing.sop_instance_uid, f"file://{disks[1]}", True),
    }
    assert all(p.study_instance_uid == damaged.study_instance_uid for p in report.problems)
    for instance in stored:
        first = (disks[0] / instance.blob_key).read_bytes()
        assert first == (disks[1] / instance.blob_key).read_bytes()
    assert sorted(replicated.read(instance) for instance in stored) == sorted(ct_files)

    again = Scrubber(replicated).run()
    assert (again.ok, again.problems, again.exit_status) == (5, [], 0)


def test_without_repair_the_damage_is_only_reported(
    replicated: Archive, disks: tuple[Path, Path], ct_files: list[bytes]
) -> None:
    stored = store_all(replicated, ct_files[:2])
    (disks[0] / stored[0].blob_key).unlink()
    report = Scrubber(replicated).run(repair=False)
    assert (report.missing, report.repaired, report.unrepairable) == (1, 0, 0)
    assert report.exit_status == 1  # a good copy exists, but a copy is still missing
    assert not (disks[0] / stored[0].blob_key).exists()


def test_damage_without_replicas_is_unrepairable_through_the_cli(
    tmp_path: Path,
    database_url: str,
    ct_files: list[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    archive = Archive.open(data_dir, database_url)
    try:
        stored = store_all(archive, ct_files)
    finally:
        archive.close()
    flip_a_byte(data_dir / "blobs" / stored[0].blob_key)
    (data_dir / "blobs" / stored[1].blob_key).unlink()
    options = ["--data-dir", str(data_dir), "--database-url", database_url, "--no-progress"]

    assert scrub_cli(["scrub", "--json", *options]) == 2
    document = json.loads(capsys.readouterr().out)
    assert (document["checked"], document["ok"], document["unrepairable"]) == (5, 3, 2)
    assert (document["damaged"], document["missing"], document["repaired"]) == (1, 1, 0)
    assert document["exit_status"] == 2
    found = {(p["what"], p["sop_instance_uid"], p["repaired"]) for p in document["problems"]}
    assert found == {
        ("damaged", stored[0].sop_instance_uid, False),
        ("missing", stored[1].sop_instance_uid, False),
    }

    assert scrub_cli(["scrub", *options]) == 2
    text = capsys.readouterr().out
    assert f"DAMAGED instance sop {stored[0].sop_instance_uid}" in text
    assert "no intact copy to repair from" in text
    assert "5 checked" in text and "2 unrepairable" in text


def test_scrub_sees_every_replica_of_every_volume(
    tmp_path: Path, database_url: str, disks: tuple[Path, Path], ct_files: list[bytes]
) -> None:
    base = ReplicatedBlobStore([LocalBlobStore(disks[0]), LocalBlobStore(disks[1])])
    added: list[tuple[str, bool]] = []
    volumes = VolumeSet(base, lambda: list(added))
    archive = make_archive(tmp_path, database_url, volumes)
    try:
        old = store_all(archive, ct_files[:1])[0]
        (tmp_path / "disk3").mkdir()
        added.append((f"file://{tmp_path / 'disk3'}", True))
        volumes.refresh()
        archive.store(ct_files[1], source="test")
        new = next(s for s in archive.locate(old.study_instance_uid) if s.pk != old.pk)
        assert (tmp_path / "disk3" / new.blob_key).exists()
        (disks[1] / old.blob_key).unlink()
        flip_a_byte(tmp_path / "disk3" / new.blob_key)  # the only copy

        report = Scrubber(archive).run()
        assert (report.repaired, report.damaged, report.unrepairable) == (1, 1, 1)
        assert report.exit_status == 2
        assert (disks[1] / old.blob_key).read_bytes() == (disks[0] / old.blob_key).read_bytes()
        assert {(p.what, p.replica, p.repaired) for p in report.problems} == {
            ("missing", f"file://{disks[1]}", True),
            ("damaged", f"file://{tmp_path / 'disk3'}", False),
        }
    finally:
        archive.close()
        volumes.close()


def test_cold_bundles_are_checked_and_cold_instances_skipped(
    tmp_path: Path, database_url: str, study: StudySpec
) -> None:
    hot, cold = LocalBlobStore(tmp_path / "hot"), LocalBlobStore(tmp_path / "cold")
    archive = make_archive(tmp_path, database_url, hot, cold_blobs=cold)
    try:
        cold_files = [to_part10(ds) for ds in ct_series(study, slices=3, size=16)]
        hot_files = [to_part10(ds) for ds in ct_series(study, slices=2, size=16, series_number=2)]
        cold_series = store_all(archive, cold_files)[0].series_instance_uid
        store_all(archive, hot_files)
        with archive.sessions() as session:
            series_pk = session.scalar(
                select(Series.pk).where(Series.series_instance_uid == cold_series)
            )
        assert series_pk is not None
        assert archive.tiering.tier_series(series_pk) is not None
        with archive.sessions() as session:
            bundle_key = session.scalars(
                select(SeriesTier.cold_key).where(SeriesTier.series_pk == series_pk)
            ).one()
        assert len(list(hot.keys())) == len(hot_files)  # cold instances have no hot blob

        report = Scrubber(archive).run()
        assert (report.instances, report.bundles, report.ok, report.problems) == (2, 1, 3, [])

        flip_a_byte(tmp_path / "cold" / bundle_key, offset=100)
        report = Scrubber(archive).run()
        assert (report.damaged, report.unrepairable, report.exit_status) == (1, 1, 2)
        (problem,) = report.problems
        assert (problem.subject, problem.what, problem.key) == ("bundle", "damaged", bundle_key)
        assert problem.series_instance_uid == cold_series
        assert problem.study_instance_uid == study.study_instance_uid
    finally:
        archive.close()


def test_conflicts_destroyed_studies_and_orphans(
    tmp_path: Path, database_url: str, study: StudySpec
) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    archive = make_archive(tmp_path, database_url, blobs)
    try:
        datasets = list(ct_series(study, slices=2, size=16))
        store_all(archive, [to_part10(ds) for ds in datasets])
        datasets[0].SeriesDescription = "edited after sending"
        with pytest.raises(DuplicateInstanceError):
            archive.store(to_part10(datasets[0]), source="test")
        shredded = store_all(archive, [to_part10(ds) for ds in ct_series(other_study(), 2, 16)])
        assert archive.keys.destroy(shredded[0].study_instance_uid)
        orphan = "objects/00/00/" + "0" * 64 + ".dcm"
        blobs.put(orphan, b"left by a crash between blob and index")

        report = Scrubber(archive).run(orphans=True)
        assert (report.instances, report.conflicts, report.skipped) == (2, 1, 2)
        assert (report.ok, report.orphans, report.exit_status) == (3, 1, 0)
        assert [(p.what, p.key) for p in report.problems] == [("orphan", orphan)]

        with archive.sessions() as session:
            conflict_key = session.scalars(select(IngestConflict.received_blob_key)).one()
        blobs.delete(conflict_key)
        report = Scrubber(archive).run()
        assert report.exit_status == 2
        assert [(p.subject, p.what, p.key) for p in report.problems] == [
            ("conflict", "missing", conflict_key)
        ]
    finally:
        archive.close()


def test_objects_deleted_while_being_scrubbed_are_not_reported(
    tmp_path: Path, database_url: str, ct_files: list[bytes]
) -> None:
    archive = make_archive(tmp_path, database_url, LocalBlobStore(tmp_path / "blobs"))
    try:
        study_uid = store_all(archive, ct_files[:3])[0].study_instance_uid

        def delete_after_the_first(done: int, _total: int) -> None:
            if done == 1:  # the other rows are already in the batch being checked
                archive.delete_study(study_uid)

        report = Scrubber(archive).run(delete_after_the_first)
        assert (report.checked, report.ok, report.skipped) == (1, 1, 2)
        assert (report.problems, report.exit_status) == ([], 0)
    finally:
        archive.close()
