"""The whole lifecycle with both tiers in S3 buckets (moto's server, real S3 protocol):
encryption and KEK rotation, tiering, scrub, restore, and destruction of a study that is
cold, with its record verified — the same code the local directories run."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.archive import Archive
from cloud.destruction import Destruction
from cloud.models import DestructionRecord
from cloud.retention import Actor, Retention
from cloud.scrub import Scrubber
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.s3 import s3_server

pytestmark = pytest.mark.needs_s3

OFFICER = Actor(kind="user", name="records.officer", role="platform_admin")


def _study(patient: str, study_date: str) -> tuple[str, dict[str, bytes]]:
    spec = StudySpec(patient=PatientSpec(patient_id=patient), study_date=study_date)
    files = {str(ds.SOPInstanceUID): to_part10(ds) for ds in ct_series(spec, slices=3, size=24)}
    return spec.study_instance_uid, files


def test_rotate_tier_scrub_restore_and_destroy_on_s3(tmp_path: Path, database_url: str) -> None:
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
            kept, kept_files = _study("KEPT", "20260101")
            expired, expired_files = _study("EXPIRED", "19900101")  # 15 years: long past
            for files in (kept_files, expired_files):
                for data in files.values():
                    archive.store(data, source="test")

            old_kek = archive.keys.keks.current_id()
            archive.keys.keks.rotate()
            assert archive.keys.rewrap().rewrapped == 2
            assert archive.keys.retire_unused()[0] == [old_kek]

            later = datetime.now(UTC) + timedelta(hours=1)
            assert len(archive.tiering.tier_due(timedelta(0), now=later)) == 2
            assert sorted(o["Key"].split("/")[2] for o in _objects(s3, cold)) == sorted(
                [kept, expired]
            )
            assert _objects(s3, hot) == []

            scrub = Scrubber(archive).run()
            assert scrub.exit_status == 0 and scrub.bundles == 2, scrub.as_text()

            restored = {s.sop_instance_uid: archive.read(s) for s in archive.locate(kept)}
            assert restored == kept_files

            retention = Retention(archive, today=lambda: date(2026, 11, 23))
            retention.classify_new()
            due = {d.study_instance_uid for d in retention.due_for_destruction()}
            assert due == {expired}
            destruction = Destruction(archive, retention)
            destruction.destroy(expired, approved_by="chief.records", actor=OFFICER)

            assert all(expired not in o["Key"] for o in _objects(s3, cold)), "bundle deleted"
            report = destruction.verify()
            assert report.ok, report.problems
            with archive.sessions() as session:
                keys = json.loads(session.scalars(select(DestructionRecord.blob_keys)).one())
            bundle = next(k for k in keys if k.startswith("cold:series/"))

            # a bundle copy comes back (a bucket version restored by mistake, say)
            archive.cold_blobs.put(bundle.removeprefix("cold:"), b"zombie")
            assert not destruction.verify().ok, "a resurrected cold bundle is reported"
        finally:
            archive.close()


def _objects(s3: object, bucket: str) -> list[dict[str, str]]:
    listed = s3.client().list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    return list(listed.get("Contents", []))
