"""`make demo` as a user meets it: `imaging-cloud demo` starts, loads its data and its URLs work.

Runs the real command in a subprocess on free loopback ports (no shared samples: the demo's own
synthetic CT and surgical video only), reads what it prints, signs in as the demo accounts it
announces and checks what they were promised, then stops it with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.needs_ffmpeg]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with _running_demo(tmp_path_factory.mktemp("demo")) as running:
        yield running


@contextmanager
def _running_demo(data_dir: Path) -> Iterator[tuple[str, str]]:
    http_port, dicom_port, gateway_port = free_ports(3)
    env = {**os.environ, "IMAGING_CLOUD_SAMPLES": str(data_dir / "no-samples")}
    command = [
        sys.executable, "-m", "imaging_cloud.cli", "demo", "--data-dir", str(data_dir),
        "--http-port", str(http_port), "--dicom-port", str(dicom_port),
        "--gateway-dicom-port", str(gateway_port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    printed: list[str] = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            printed.append(line)
            if line.startswith("  curl -H"):  # the last line of the welcome text
                break
        text = "".join(printed)
        assert "imaging-cloud demo is running" in text, text[-3000:]
        yield f"http://127.0.0.1:{http_port}", text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _token(base: str, username: str) -> str:
    answer = httpx.post(
        f"{base}/api/auth/token", data={"username": username, "password": "demo-password"}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def test_the_demo_prints_working_urls(demo: tuple[str, str]) -> None:
    base, text = demo
    for path in re.findall(r"http://127\.0\.0\.1:\d+(/[^\s)]*)", text):
        if "dicom-web" in path or path.startswith("/api/"):
            continue  # need a token; checked below
        answer = httpx.get(base + path, follow_redirects=True, timeout=30)
        assert answer.status_code == 200, (path, answer.status_code)


def test_the_demo_has_its_studies_and_an_annotated_video_in_review(demo: tuple[str, str]) -> None:
    base, text = demo
    admin = {"Authorization": f"Bearer {_token(base, 'demo.admin')}"}
    for accession in ("DEMO0001", "DEMOOR01"):  # the synthetic CT, the surgical video
        found = httpx.get(
            f"{base}/dicom-web/studies", params={"AccessionNumber": accession}, headers=admin
        )
        assert len(found.json()) == 1, accession
    videos = httpx.get(f"{base}/api/videos", headers=admin, timeout=30).json()
    assert videos["total"] == 1
    [video] = videos["videos"]
    assert video["annotationCount"] == 3 and video["width"] == 1920
    assert video["operationMinutes"] == 85.0
    expert = {"Authorization": f"Bearer {_token(base, 'demo.expert')}"}
    tasks = httpx.get(f"{base}/api/video-reviews/tasks", headers=expert, timeout=30).json()
    assert len(tasks["tasks"]) == 1
    assert "demo.expert" in text and "/video-review/" in text


def test_a_demo_started_again_keeps_its_video(tmp_path: Path) -> None:
    """The same data directory twice: one surgical video, one review task, not two of each."""
    for _ in range(2):
        with _running_demo(tmp_path / "data") as (base, _text):
            admin = {"Authorization": f"Bearer {_token(base, 'demo.admin')}"}
            videos = httpx.get(f"{base}/api/videos", headers=admin, timeout=30).json()
            tasks = httpx.get(f"{base}/api/video-reviews/tasks", headers=admin, timeout=30)
    assert videos["total"] == 1
    assert len(tasks.json()["tasks"]) == 1
