"""The production shape's job queue: an API node queues a restore on Redis (RQ) and an
`imaging-cloud worker` process, a separate program, runs it; the node reports its progress."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from cloud.lifecycle_jobs import RedisQueue
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import client, running_node

pytestmark = pytest.mark.needs_redis

DICOM_ALL = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def test_a_restore_queued_by_the_api_is_run_by_a_separate_worker_process(
    tmp_path: Path, database_url: str, redis_url: str
) -> None:
    connection = Redis.from_url(redis_url)
    Queue(RedisQueue.NAME, connection=connection).empty()  # nothing left from another run
    spec = StudySpec(patient=PatientSpec(patient_id="QUEUED"))
    files = {str(ds.SOPInstanceUID): to_part10(ds) for ds in ct_series(spec, slices=4, size=32)}
    data_dir = tmp_path / "node"
    settings = {"cold_read_wait_seconds": 0, "job_queue_url": redis_url}
    with running_node(data_dir, database_url, **settings) as node, client(node) as http:
        for data in files.values():
            node.archive.store(data, source="test")
        node.archive.tiering.tier_due(timedelta(0), now=datetime.now(UTC) + timedelta(hours=1))
        url = f"/dicom-web/studies/{spec.study_instance_uid}"

        accepted = http.get(url, headers=DICOM_ALL)

        assert accepted.status_code == 202
        status_url = accepted.headers["Location"]
        assert Queue(RedisQueue.NAME, connection=connection).count == 1, "queued on Redis"
        time.sleep(0.3)
        assert http.get(status_url).json()["state"] == "queued", "no worker yet: it waits"

        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "imaging_cloud.cli",
                "worker",
                "--data-dir",
                str(data_dir),
                "--database-url",
                database_url,
                "--job-queue-url",
                redis_url,
                "--burst",
            ],
            env={**os.environ, "IMAGING_CLOUD_LIFECYCLE_SCHEDULE": "false"},
            capture_output=True,
            text=True,
            timeout=120,
        )

        assert worker.returncode == 0, worker.stderr
        job = http.get(status_url).json()
        assert job["state"] == "done", job
        assert job["detail"]["series"][0]["instances"] == 4
        served = http.get(url, headers=DICOM_ALL)
        assert served.status_code == 200
        assert all(data in served.content for data in files.values())
    connection.close()
