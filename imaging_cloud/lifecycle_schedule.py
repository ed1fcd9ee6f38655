"""The periodic lifecycle pass and the lifecycle jobs a node or worker runs.

Every ``lifecycle_check_seconds`` one pass classifies the studies received since the last one
(retention), maps their exam codes to the region's, scores the data quality of new and changed
studies, moves series unused for ``cold_after_days`` to the cold tier, backs the index up
when a backup is due (hourly with level 3-4 data, daily otherwise), and last queues the
replacement of HD surgical recordings by SD copies once their class's
``downgrade_to_sd_after_days`` has passed: one ``video_downgrade`` lifecycle job per video (at
most `VIDEO_DOWNGRADES_PER_PASS` a pass), since each is a re-encoding that must not hold up
the pass (the jobs run on the job queue: this process's threads, or the workers). In the
embedded default the node runs it; in the production shape one ``imaging-cloud worker`` does,
and the API processes set ``lifecycle_schedule = false``. A failing step is logged and the
next one runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from cloud.archive import Archive
from cloud.exam_codes import ExamCodes
from cloud.index_backup import IndexBackups
from cloud.lifecycle_jobs import Progress
from cloud.quality import QualityScorer
from cloud.retention import Retention
from cloud.scrub import Scrubber
from cloud.video_derivatives import downgrade_video, due_for_sd
from imaging_cloud.settings import Settings, index_backup_dir
from imaging_cloud.video_processing_cli import make_sd_copy

logger = logging.getLogger(__name__)
VIDEO_DOWNGRADES_PER_PASS = 5


def register_lifecycle_jobs(archive: Archive, settings: Settings) -> None:
    """Teach the archive's job runner the jobs beyond restores: tiering (and scrubbing)."""
    cold_after = timedelta(days=settings.cold_after_days)

    def tier(_target: str, progress: Progress) -> dict[str, Any]:
        moved = archive.tiering.tier_due(cold_after, progress)
        return {"series": len(moved), "instances": sum(m.instances for m in moved)}

    def scrub(_target: str, progress: Progress) -> dict[str, Any]:
        report = Scrubber(archive).run(progress).as_dict()
        report.pop("problems", None)  # the counts for the job; the problems are in the log
        return report

    def video_downgrade(target: str, progress: Progress) -> dict[str, Any]:
        due = due_for_sd(archive, sop_instance_uid=target)
        if not due:
            return {"video": target, "state": "not due"}  # done already, held, or not due
        progress(0, 1)
        done = downgrade_video(archive, due[0], make_sd_copy)
        progress(1, 1)
        if done is None:
            return {"video": target, "state": "another run has it"}
        return {"video": target, "state": "downgraded", "sd": done.sd_uid}

    archive.job_runner.register("tier", tier)
    archive.job_runner.register("scrub", scrub)
    archive.job_runner.register("video_downgrade", video_downgrade)


class LifecycleSchedule:
    """Runs `run_once` every ``interval`` seconds on a daemon thread until `stop`."""

    def __init__(self, archive: Archive, settings: Settings) -> None:
        self._archive = archive
        self._settings = settings
        register_lifecycle_jobs(archive, settings)
        self._quality = QualityScorer(archive, timezone=settings.audit_timezone)
        self._exam_codes = ExamCodes.of(archive)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backups = IndexBackups(
            archive.engine,
            index_backup_dir(settings),
            archive.keys.keks,
            keep=settings.index_backup_keep,
        )
        self._steps: list[tuple[str, Callable[[], Any]]] = [
            ("classify", self._classify),
            ("exam_codes", lambda: self._exam_codes.normalise_new(limit=2000)),
            ("quality", lambda: self._quality.score_due(limit=500)),
            ("tier", self._tier),
            ("backup", self._backup),
            ("video_downgrade", self._video_downgrade),
        ]

    def run_once(self) -> dict[str, Any]:
        """One pass; what each step did (or the error that stopped it)."""
        results: dict[str, Any] = {}
        for name, step in self._steps:
            if self._stop.is_set():
                break
            try:
                results[name] = step()
            except Exception as exc:  # one failing step must not stop the others, or later passes
                logger.exception("lifecycle step %s failed", name)
                results[name] = f"failed: {exc}"
        return results

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self._settings.lifecycle_check_seconds):
                self.run_once()

        self._thread = threading.Thread(target=loop, name="lifecycle-schedule", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _classify(self) -> int:
        return Retention(self._archive).classify_new()

    def _tier(self) -> int:
        if not self._settings.cold_after_days:
            return 0
        job_pk, new = self._archive.jobs.create("tier", requested_by="schedule")
        if not new:
            return 0
        view = self._archive.job_runner.run(job_pk)
        if view.state != "done":
            raise RuntimeError(f"tier job {job_pk}: {view.error}")
        return int(view.detail.get("series", 0))

    def _video_downgrade(self) -> dict[str, int]:
        """Queue a ``video_downgrade`` job per due video (one already queued or running for
        the same video is joined, not repeated); how many were queued."""
        queued = 0
        for video in due_for_sd(self._archive, limit=VIDEO_DOWNGRADES_PER_PASS):
            job_pk, new = self._archive.jobs.create(
                "video_downgrade", video.sop_instance_uid, requested_by="schedule"
            )
            if new:
                self._archive.submit_job(job_pk)
                queued += 1
        return {"queued": queued}

    def _backup(self) -> str:
        made = self._backups.run_if_due()
        return made.path.name if made is not None else "not due"
