"""`imaging-cloud worker`: runs lifecycle jobs from Redis (RQ) — the production shape's worker.

API processes with ``job_queue_url`` set put job numbers on the RQ queue
(`cloud.lifecycle_jobs.RedisQueue`); each worker opens the archive once, like ``serve``, and
runs them with the archive's `JobRunner` (state and progress in the index, where every API
process reads them). RQ's `SimpleWorker` runs jobs in the worker process itself: a fork per
job would copy the database pool and the key cache into a child for nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from cloud.archive import Archive
from cloud.lifecycle_jobs import JobRunner, RedisQueue
from imaging_cloud.lifecycle_schedule import LifecycleSchedule, register_lifecycle_jobs
from imaging_cloud.settings import Settings, load_settings, open_archive

logger = logging.getLogger(__name__)

JOB_FUNCTION = "imaging_cloud.worker.run_job"
_runner: JobRunner | None = None


def run_job(job_pk: int) -> str:
    """What RQ calls: run lifecycle job ``job_pk`` with this worker's archive; its final state."""
    if _runner is None:
        raise RuntimeError("run_job runs inside `imaging-cloud worker` only")
    return _runner.run(job_pk).state


def job_queue_for(settings: Settings) -> RedisQueue | None:
    """The Redis queue the settings name, or None for the in-process default."""
    if not settings.job_queue_url:
        return None
    return RedisQueue(settings.job_queue_url, JOB_FUNCTION)


def serve_worker(settings: Settings, *, burst: bool = False) -> int:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    global _runner
    if not settings.job_queue_url:
        raise SystemExit("imaging-cloud worker needs job_queue_url (redis://…) in its settings")
    from redis import Redis
    from rq import Queue, SimpleWorker

    archive: Archive = open_archive(settings)
    register_lifecycle_jobs(archive, settings)
    _runner = archive.job_runner
    schedule = LifecycleSchedule(archive, settings) if settings.lifecycle_schedule else None
    connection = Redis.from_url(settings.job_queue_url)
    try:
        if schedule is not None and not burst:
            schedule.start()
        worker = SimpleWorker(
            [Queue(RedisQueue.NAME, connection=connection)], connection=connection
        )
        worker.work(burst=burst, logging_level="WARNING")
    finally:
        if schedule is not None:
            schedule.stop()
        _runner = None
        archive.close()
        connection.close()
    return 0


def add_worker_command(commands: Any) -> None:
    worker = commands.add_parser(
        "worker",
        help="run lifecycle jobs (restores, tiering, scrubs) from the Redis queue",
        description="Run the lifecycle jobs the API processes queue on Redis (job_queue_url), "
        "and the periodic lifecycle pass unless lifecycle_schedule is false.",
    )
    worker.add_argument("--data-dir", type=Path, help="the node's data dir")
    worker.add_argument("--database-url", help="index URL")
    worker.add_argument("--blob-url", help="hot blob store URL")
    worker.add_argument("--job-queue-url", help="redis://host:6379/0")
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty")

    def run(args: argparse.Namespace) -> int:
        settings = load_settings(
            data_dir=args.data_dir,
            database_url=args.database_url,
            blob_url=args.blob_url,
            job_queue_url=args.job_queue_url,
        )
        return serve_worker(settings, burst=args.burst)

    worker.set_defaults(handler=run)
