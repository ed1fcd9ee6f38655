"""Hot and cold tiers end to end: tiering, byte-exact restore, reads of cold data (wait or 202
with a status URL, over DICOMweb and DIMSE), access statistics, deletion and destruction of
cold data, damaged bundles, on local directories and on S3 (moto's server)."""

from __future__ import annotations

import io
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import zstandard
from sqlalchemy import func, select

from cloud.archive import Archive
from cloud.cold_bundle import BundleDamagedError
from cloud.errors import InstanceNotFoundError, RestoreInProgressError
from cloud.models import Instance, Series, SeriesTier
from cloud.tiering import record_access
from imaging_cloud.cli import main as cli_main
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.s3 import s3_server
from tests.support.servers import client, running_node

NOW = timedelta(0)  # "cold after 0 days": everything not read this instant is due


class HeldQueue:
    """A job queue that runs nothing until told: a small restore would otherwise finish
    before a read that must not wait could even look at it."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.held: list[int] = []

    def submit(self, job_pk: int) -> None:
        self.held.append(job_pk)

    def release(self) -> None:
        while self.held:
            self.archive.job_runner.run(self.held.pop(0))

    def close(self) -> None:
        pass


def _hold_jobs(archive: Archive) -> HeldQueue:
    queue = HeldQueue(archive)
    archive.use_job_queue(queue)
    return queue


def _study(slices: int = 12, patient: str = "TIER01") -> tuple[str, dict[str, bytes]]:
    spec = StudySpec(patient=PatientSpec(patient_id=patient))
    files = {}
    for number in (1, 2):
        for ds in ct_series(spec, slices=slices, size=48, series_number=number):
            files[str(ds.SOPInstanceUID)] = to_part10(ds)
    return spec.study_instance_uid, files


def _store(archive: Archive, files: dict[str, bytes]) -> None:
    for data in files.values():
        archive.store(data, source="test")


def _read_all(archive: Archive, study: str) -> dict[str, bytes]:
    return {s.sop_instance_uid: archive.read(s) for s in archive.locate(study)}


def _tiers(archive: Archive) -> dict[str, int]:
    with archive.sessions() as session:
        return dict(
            session.execute(select(Instance.tier, func.count()).group_by(Instance.tier)).all()
        )


@pytest.fixture
def cold_archive(tmp_path: Path, database_url: str) -> Iterator[Archive]:
    opened = Archive.open(tmp_path / "data", database_url, cold_read_wait_seconds=30)
    yield opened
    opened.close()


def test_tiering_moves_series_to_bundles_and_a_read_restores_them_byte_exact(
    cold_archive: Archive,
) -> None:
    archive = cold_archive
    study, files = _study()
    _store(archive, files)
    hot_keys = [s.blob_key for s in archive.locate(study)]
    assert archive.tiering.due(timedelta(hours=1)) == [], "received and read just now"

    moved = archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))

    assert len(moved) == 2 and sum(m.instances for m in moved) == len(files)
    assert _tiers(archive) == {"cold": len(files)}
    assert not any(archive.blobs.exists(key) for key in hot_keys), "hot copies deleted"
    bundles = sorted(archive.cold_blobs.keys())
    assert len(bundles) == 2 and all(key.endswith(".tar.zst.ice") for key in bundles)
    assert all(m.cold_bytes < m.plain_bytes for m in moved), "bundles are compressed"
    for key in bundles:  # sealed: no Part-10 preamble, no patient ID in the clear
        assert b"TIER01" not in archive.cold_blobs.get(key)

    restored = _read_all(archive, study)  # waits for the restore job (cold_read_wait 30 s)

    assert restored == files, "every object comes back exactly as received"
    assert _tiers(archive) == {"hot": len(files)}
    assert list(archive.cold_blobs.keys()) == [], "bundles removed once restored"
    jobs = archive.jobs.recent(kind="restore")
    assert [j.state for j in jobs] == ["done"] and jobs[0].detail["series"]


def test_an_unencrypted_bundle_is_a_plain_zstd_tar_an_operator_can_open(
    tmp_path: Path, database_url: str
) -> None:
    archive = Archive.open(tmp_path / "data", database_url, encryption=False)
    try:
        study, files = _study(slices=4)
        _store(archive, files)
        archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
        members: dict[str, bytes] = {}
        for key in archive.cold_blobs.keys():
            assert key.startswith(f"series/{study}/") and key.endswith(".tar.zst")
            raw = zstandard.ZstdDecompressor().stream_reader(
                io.BytesIO(archive.cold_blobs.get(key))
            )
            with tarfile.open(fileobj=raw, mode="r|") as tar:
                for info in tar:
                    handle = tar.extractfile(info)
                    assert handle is not None
                    members[info.name.removesuffix(".dcm")] = handle.read()
        assert members == files
    finally:
        archive.close()


def test_a_read_that_cannot_wait_gets_the_restore_job_and_the_job_finishes(
    tmp_path: Path, database_url: str
) -> None:
    archive = Archive.open(tmp_path / "data", database_url, cold_read_wait_seconds=0)
    queue = _hold_jobs(archive)
    try:
        study, files = _study()
        _store(archive, files)
        archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))

        with pytest.raises(RestoreInProgressError) as refused:
            archive.locate(study)
        again = pytest.raises(RestoreInProgressError)
        with again as second:
            archive.locate(study)
        assert second.value.job_pk == refused.value.job_pk, "a second read joins the same job"
        assert refused.value.http_status == 202 and refused.value.dimse_status == 0xA702
        assert archive.jobs.get(refused.value.job_pk).state == "queued"

        queue.release()
        job = archive.jobs.wait(refused.value.job_pk, 30)
        assert job.state == "done", job.error
        assert _read_all(archive, study) == files
    finally:
        archive.close()


def test_reads_keep_used_series_hot_and_the_policy_tiers_only_unused_ones(
    cold_archive: Archive,
) -> None:
    archive = cold_archive
    used, used_files = _study(patient="USED")
    unused, unused_files = _study(patient="UNUSED")
    _store(archive, used_files)
    _store(archive, unused_files)
    with archive.sessions() as session:
        every_series = list(session.scalars(select(Series.pk)))
    long_ago = datetime.now(UTC) - timedelta(days=400)
    record_access(archive.sessions, every_series, at=long_ago)  # both last read 400 days ago
    with archive.sessions() as session:  # received long ago too
        session.execute(Series.__table__.update().values(created_at=long_ago))
        session.commit()
    archive.access_stats._written.clear()
    archive.locate(used)  # a clinician opens one of them today

    due = archive.tiering.due(timedelta(days=365))

    assert {d.study_instance_uid for d in due} == {unused}
    with archive.sessions() as session:
        counts = dict(session.execute(select(SeriesTier.series_pk, SeriesTier.access_count)).all())
    assert sorted(counts.values()) == [1, 1, 2, 2], "each read is counted on its series"


def test_deleting_a_cold_study_removes_its_bundles(cold_archive: Archive) -> None:
    archive = cold_archive
    study, files = _study(slices=3)
    keep, keep_files = _study(slices=3, patient="KEEP")
    _store(archive, files)
    _store(archive, keep_files)
    archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
    assert len(list(archive.cold_blobs.keys())) == 4

    archive.delete_study(study)

    assert all(f"/{study}/" not in key for key in archive.cold_blobs.keys())
    assert len(list(archive.cold_blobs.keys())) == 2
    assert _read_all(archive, keep) == keep_files, "the other study is untouched"


def test_a_damaged_bundle_fails_the_restore_and_loses_nothing(cold_archive: Archive) -> None:
    archive = cold_archive
    study, files = _study(slices=4)
    _store(archive, files)
    archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
    key = sorted(archive.cold_blobs.keys())[0]
    original = archive.cold_blobs.get(key)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    archive.cold_blobs.put(key, bytes(damaged))

    with pytest.raises(BundleDamagedError):
        archive.tiering.restore_study(study)
    with pytest.raises(Exception, match="failed"):  # the read reports the failed restore job
        _read_all(archive, study)
    assert _tiers(archive).get("cold", 0) >= 4, "still cold, nothing half-restored"

    archive.cold_blobs.put(key, original)  # a replica or backup copy put back
    assert _read_all(archive, study) == files


def test_tier_and_restore_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    archive = Archive.open(data_dir)
    study, files = _study(slices=4)
    _store(archive, files)
    with archive.sessions() as session:
        session.execute(
            Series.__table__.update().values(created_at=datetime.now(UTC) - timedelta(days=30))
        )
        session.commit()
    archive.close()
    base = ["lifecycle", "--data-dir", str(data_dir)]

    assert cli_main([*base, "tier", "--cold-after", "10", "--dry-run"]) == 0
    assert "2 series would move" in capsys.readouterr().out
    assert cli_main([*base, "tier", "--cold-after", "10", "--no-progress"]) == 0
    assert "2 series (8 instances" in capsys.readouterr().out
    assert cli_main([*base, "tiers", "--json"]) == 0
    assert '"coldInstances": 8' in capsys.readouterr().out
    assert cli_main([*base, "restore", study, "--no-progress"]) == 0
    assert "8 instances restored" in capsys.readouterr().out

    archive = Archive.open(data_dir)
    try:
        assert _read_all(archive, study) == files
    finally:
        archive.close()


def test_dicomweb_answers_202_with_a_status_url_then_serves_the_originals(
    tmp_path: Path, database_url: str
) -> None:
    study, files = _study(slices=3)
    with (
        running_node(tmp_path / "node", database_url, cold_read_wait_seconds=0) as node,
        client(node) as http,
    ):
        queue = _hold_jobs(node.archive)
        _store(node.archive, files)
        node.archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
        sop = next(iter(files))
        with node.archive.sessions() as session:
            series_uid = session.scalar(
                select(Series.series_instance_uid)
                .join(Instance, Instance.series_pk == Series.pk)
                .where(Instance.sop_instance_uid == sop)
            )
        url = f"/dicom-web/studies/{study}/series/{series_uid}/instances/{sop}"
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}

        first = http.get(url, headers=accept)

        assert first.status_code == 202
        assert first.headers["Retry-After"] == "5"
        status_url = first.headers["Location"]
        assert status_url == first.json()["statusUrl"] and status_url.startswith("/api/lifecycle/")
        assert http.get(status_url).json()["state"] == "queued"
        queue.release()
        deadline = time.monotonic() + 30
        while (job := http.get(status_url).json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert job["state"] == "done" and job["kind"] == "restore" and job["target"] == study
        second = http.get(url, headers=accept)
        assert second.status_code == 200
        assert files[sop] in second.content
        anonymous = httpx.get(f"{http.base_url}{status_url}")
        assert anonymous.status_code == 401


def test_explicit_restore_route_prefetches_a_study(tmp_path: Path, database_url: str) -> None:
    study, files = _study(slices=3)
    with running_node(tmp_path / "node", database_url) as node, client(node) as http:
        _store(node.archive, files)
        node.archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
        started = http.post(f"/api/studies/{study}/restore")
        assert started.status_code == 202
        job = node.archive.jobs.wait(started.json()["job"], 30)
        assert job.state == "done"
        assert http.post(f"/api/studies/{study}/restore").json()["status"] == "hot"
        with pytest.raises(InstanceNotFoundError):
            node.archive.locate("1.2.3.404")


@pytest.mark.needs_s3
def test_tiering_and_restore_with_both_tiers_on_s3(tmp_path: Path, database_url: str) -> None:
    with s3_server() as s3:
        hot, cold = s3.new_bucket(), s3.new_bucket()
        archive = Archive.open(
            tmp_path / "data",
            database_url,
            s3.url(hot),
            cold_url=s3.url(cold, prefix="cold"),
            cold_read_wait_seconds=30,
        )
        try:
            study, files = _study(slices=4)
            _store(archive, files)
            moved = archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
            assert len(moved) == 2
            assert len(list(archive.blobs.keys())) == 0
            listed = s3.client().list_objects_v2(Bucket=cold)["Contents"]
            assert len(listed) == 2 and all(o["Key"].startswith("cold/series/") for o in listed)
            assert _read_all(archive, study) == files
            assert len(list(archive.cold_blobs.keys())) == 0
        finally:
            archive.close()


@pytest.mark.needs_dcmtk
def test_dcmtk_getscu_of_a_cold_study_is_told_to_retry_then_gets_it(
    tmp_path: Path,
) -> None:
    study, files = _study(slices=2)
    with running_node(tmp_path / "node", cold_read_wait_seconds=0) as node:
        queue = _hold_jobs(node.archive)
        node.archive.hospitals.add_hospital("H1", "Hospital 1", ae_title="H1GW")
        hospital = node.archive.hospitals.by_ae_title("H1GW")
        assert hospital is not None
        for data in files.values():
            node.archive.store(data, source="test", hospital_pk=hospital.pk)
        node.archive.tiering.tier_due(NOW, now=datetime.now(UTC) + timedelta(hours=2))
        out = tmp_path / "received"
        out.mkdir()
        command = ["getscu", "-d", "-aet", "H1GW", "-aec", node.settings.ae_title, "-S"]
        command += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        command += ["-od", str(out), "127.0.0.1", str(node.scp.port)]

        refused = subprocess.run(command, capture_output=True, text=True, timeout=60)

        assert "a702" in refused.stderr.lower() or "OutOfResources" in refused.stderr, (
            refused.stderr
        )
        assert "cold storage" in refused.stderr
        assert list(out.iterdir()) == []
        queue.release()
        job = node.archive.jobs.recent(kind="restore")[0]
        assert node.archive.jobs.wait(job.pk, 30).state == "done"

        retried = subprocess.run(command, capture_output=True, text=True, timeout=60)

        assert retried.returncode == 0, retried.stderr
        received = {p.read_bytes() for p in out.iterdir()}
        assert len(received) == len(files)
