"""The periodic lifecycle pass: classify new studies, tier unused series, back the index up
when due — and a failing step does not stop the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud.models import Series
from imaging_cloud.lifecycle_schedule import LifecycleSchedule, register_lifecycle_jobs
from imaging_cloud.settings import index_backup_dir, load_settings, open_archive
from imaging_cloud.synthetic import StudySpec, ct_series, to_part10


def test_one_pass_classifies_tiers_and_backs_up(tmp_path: Path, database_url: str) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data", database_url=database_url, cold_after_days=30
    )
    archive = open_archive(settings)
    try:
        register_lifecycle_jobs(archive, settings)
        for ds in ct_series(StudySpec(), slices=3, size=16):
            archive.store(to_part10(ds), source="test")
        with archive.sessions() as session:  # received 40 days ago, never read since
            old = datetime.now(UTC) - timedelta(days=40)
            session.execute(Series.__table__.update().values(created_at=old))
            session.commit()
        schedule = LifecycleSchedule(archive, settings)

        first = schedule.run_once()

        assert first["classify"] == 1
        assert first["tier"] == 1
        assert first["backup"].startswith("index-")
        assert list(index_backup_dir(settings).glob("index-*.ice"))
        assert [j.state for j in archive.jobs.recent(kind="tier")] == ["done"]

        second = schedule.run_once()

        assert second == {
            "classify": 0,
            "exam_codes": 0,
            "quality": 0,
            "tier": 0,
            "backup": "not due",
            "video_downgrade": {"queued": 0},
        }
    finally:
        archive.close()


def test_a_failing_step_is_reported_and_the_rest_still_run(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    archive = open_archive(settings)
    try:
        schedule = LifecycleSchedule(archive, settings)

        def broken() -> int:
            raise RuntimeError("disk on fire")

        schedule._steps.insert(0, ("broken", broken))
        results = schedule.run_once()

        assert results["broken"] == "failed: disk on fire"
        assert results["backup"].startswith("index-")
    finally:
        archive.close()
