"""Lifecycle jobs (restore, tiering, scrub): recorded in the index, run by a queue.

A job is a `LifecycleJob` row — kind, target, state, progress, result — so any API process can
answer "how far is it?" whichever process runs it. The queue only carries job numbers:
`InProcessQueue` (threads of this process, the embedded default) or `RedisQueue` (RQ, run by
``imaging-cloud worker`` processes in the production shape). Handlers are registered by kind
on a `JobRunner`; the runner moves a job from queued to running to done or failed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.models import LifecycleJob

logger = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINISHED = (DONE, FAILED)
# A queued or running job older than this is not joined by a new request for the same target:
# its process may have died with it (a new one runs; restores are idempotent).
JOIN_WINDOW = timedelta(minutes=15)

Progress = Callable[[int, int], None]  # (done, total)
Handler = Callable[[str, Progress], dict[str, Any]]  # (target, progress) -> result detail


@dataclass(frozen=True)
class JobView:
    """A job as the status URL shows it."""

    pk: int
    kind: str
    target: str
    state: str
    done: int
    total: int
    detail: dict[str, Any]
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.pk,
            "kind": self.kind,
            "target": self.target,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "detail": self.detail,
            "error": self.error,
            "createdAt": self.created_at.isoformat(),
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
        }


class JobQueue(Protocol):
    """Carries job numbers to whatever runs them."""

    def submit(self, job_pk: int) -> None: ...

    def close(self) -> None: ...


class Jobs:
    """The job table: create (joining a running job for the same target), read, update."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()  # one process never makes two jobs for one target

    def create(self, kind: str, target: str = "", requested_by: str = "") -> tuple[int, bool]:
        """A job of ``kind`` for ``target``: (its number, True if it is new)."""
        now = datetime.now(UTC)
        with self._lock, self._sessions() as session:
            if target:
                running = session.scalar(
                    select(LifecycleJob.pk)
                    .where(
                        LifecycleJob.kind == kind,
                        LifecycleJob.target == target,
                        LifecycleJob.state.in_((QUEUED, RUNNING)),
                        LifecycleJob.created_at > now - JOIN_WINDOW,
                    )
                    .order_by(LifecycleJob.pk.desc())
                    .limit(1)
                )
                if running is not None:
                    return running, False
            job = LifecycleJob(
                kind=kind,
                target=target,
                state=QUEUED,
                done=0,
                total=0,
                detail="{}",
                error="",
                requested_by=requested_by[:128],
                created_at=now,
            )
            session.add(job)
            session.commit()
            return job.pk, True

    def get(self, job_pk: int) -> JobView:
        with self._sessions() as session:
            job = session.get(LifecycleJob, job_pk)
            if job is None:
                raise InstanceNotFoundError(f"lifecycle job {job_pk} does not exist")
            return _view(job)

    def recent(self, limit: int = 50, kind: str | None = None) -> list[JobView]:
        statement = select(LifecycleJob).order_by(LifecycleJob.pk.desc()).limit(limit)
        if kind:
            statement = statement.where(LifecycleJob.kind == kind)
        with self._sessions() as session:
            return [_view(job) for job in session.scalars(statement)]

    def wait(self, job_pk: int, seconds: float, poll: float = 0.1) -> JobView:
        """The job once finished, or as it stands after ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            view = self.get(job_pk)
            if view.state in FINISHED or time.monotonic() >= deadline:
                return view
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def _set(self, job_pk: int, **values: Any) -> None:
        with self._sessions() as session:
            session.execute(update(LifecycleJob).where(LifecycleJob.pk == job_pk).values(**values))
            session.commit()


class JobRunner:
    """Runs jobs by kind with the handlers registered for them."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs
        self._handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    def run(self, job_pk: int) -> JobView:
        """Run one job to its end; a failure is recorded on the job, never raised."""
        view = self.jobs.get(job_pk)
        if view.state in FINISHED:
            return view
        handler = self._handlers.get(view.kind)
        if handler is None:
            self.jobs._set(job_pk, state=FAILED, error=f"no handler for {view.kind} jobs")
            return self.jobs.get(job_pk)
        self.jobs._set(job_pk, state=RUNNING, started_at=datetime.now(UTC))
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()  # a row update per second at most
            if now - last[0] >= 1.0 or done >= total:
                last[0] = now
                self.jobs._set(job_pk, done=done, total=total)

        try:
            result = handler(view.target, progress)
        except ArchiveError as exc:
            logger.warning("%s job %d for %s failed: %s", view.kind, job_pk, view.target, exc)
            self._finish(job_pk, FAILED, {}, exc.detail)
        except Exception as exc:
            logger.exception("%s job %d for %s failed", view.kind, job_pk, view.target)
            self._finish(job_pk, FAILED, {}, f"{type(exc).__name__}: {exc}")
        else:
            self._finish(job_pk, DONE, result, "")
        return self.jobs.get(job_pk)

    def _finish(self, job_pk: int, state: str, detail: dict[str, Any], error: str) -> None:
        self.jobs._set(
            job_pk,
            state=state,
            detail=json.dumps(detail, default=str),
            error=error[:4000],
            finished_at=datetime.now(UTC),
        )


class InProcessQueue:
    """The embedded default: jobs run on a small thread pool of this process."""

    def __init__(self, runner: JobRunner, workers: int = 2) -> None:
        self._runner = runner
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lifecycle-job")

    def submit(self, job_pk: int) -> None:
        self._pool.submit(self._runner.run, job_pk)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class RedisQueue:
    """Jobs for RQ workers (``imaging-cloud worker``) through Redis; see `imaging_cloud.worker`.

    ``function`` is the dotted path the workers import and call with the job number.
    """

    NAME = "imaging-cloud-lifecycle"

    def __init__(self, url: str, function: str, *, timeout_seconds: int = 6 * 3600) -> None:
        from redis import Redis  # here: only the production shape needs them
        from rq import Queue

        self.connection = Redis.from_url(url)
        self.queue = Queue(self.NAME, connection=self.connection)
        self._function = function
        self._timeout = timeout_seconds

    def submit(self, job_pk: int) -> None:
        self.queue.enqueue(self._function, job_pk, job_timeout=self._timeout)

    def close(self) -> None:
        self.connection.close()


def _view(job: LifecycleJob) -> JobView:
    try:
        detail = json.loads(job.detail or "{}")
    except ValueError:
        detail = {}
    return JobView(
        pk=job.pk,
        kind=job.kind,
        target=job.target,
        state=job.state,
        done=job.done,
        total=job.total,
        detail=detail,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
