"""Real processes on loopback: storescu -> gateway -> cloud, with kill -9 and a cloud outage.

Whatever happens in between, afterwards every instance is in the cloud exactly once and
bit-exact: the cloud holds, for each SOP Instance UID, the very bytes the gateway spooled,
and the pixel data the modality sent.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from collectors.multipart import parse_media_type, split_multipart
from gateway.spool import Spool
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, write_files
from tests.support.ports import free_port, free_ports

pytestmark = pytest.mark.needs_dcmtk  # ~20 s: part of the quick run, it is the point of issue 3

CLI = [sys.executable, "-m", "imaging_cloud.cli"]


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Cloud:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.http_port, self.dicom_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None
        self.log = (data_dir.parent / "cloud.log").open("ab")
        self.token = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *CLI,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--http-port",
                str(self.http_port),
                "--dicom-port",
                str(self.dicom_port),
            ],
            stdout=self.log,
            stderr=self.log,
        )
        _wait_for(self._healthy, 30, "the cloud to start")

    def sign_in(self, username: str, password: str) -> None:
        answer = httpx.post(
            f"{self.url}/api/auth/token", data={"username": username, "password": password}
        )
        answer.raise_for_status()
        self.token = answer.json()["access_token"]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=10, **kwargs)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
            self.process = None


class GatewayProcess:
    def __init__(self, spool: Path, cloud_url: str, credential: str, sources: Path) -> None:
        self.spool, self.cloud_url, self.credential = spool, cloud_url, credential
        self.sources = sources
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = (spool.parent / "gateway.log").open("ab")

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *CLI,
                "gateway",
                "serve",
                "--cloud-url",
                self.cloud_url,
                "--spool-dir",
                str(self.spool),
                "--hospital-id",
                "H1",
                "--dicom-port",
                str(self.port),
                "--ae-title",
                "H1GW",
                "--heartbeat-seconds",
                "1",
                "--audit-settle-seconds",
                "1",
                "--sources",
                str(self.sources),
            ],
            stdout=self.log,
            stderr=self.log,
            env={**os.environ, "IMAGING_CLOUD_GATEWAY_CREDENTIAL": self.credential},
        )
        _wait_for(
            lambda: (
                subprocess.run(
                    ["echoscu", "-aec", "H1GW", "127.0.0.1", str(self.port)], capture_output=True
                ).returncode
                == 0
            ),
            30,
            "the gateway SCP",
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no cleanup, no flush
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
            self.process = None


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    spec = StudySpec(patient=PatientSpec(patient_id="FAULT-1", patient_name="Sun^Qi"))
    return write_files(ct_series(spec, slices=80, size=128), tmp_path / "modality")


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Cloud, GatewayProcess, Path]]:
    cloud = Cloud(tmp_path / "cloud")
    credential = subprocess.run(
        [
            *CLI,
            "admin",
            "add-hospital",
            "--data-dir",
            str(cloud.data_dir),
            "--hospital-id",
            "H1",
            "--name",
            "Hospital One",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    admin = ["--username", "platform.one", "--password", "fault-test-password"]
    subprocess.run(
        [*CLI, "admin", "create-user", "--data-dir", str(cloud.data_dir), *admin,
         "--role", "platform_admin"],
        check=True, capture_output=True,
    )  # fmt: skip
    cloud.start()
    cloud.sign_in("platform.one", "fault-test-password")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    sources = tmp_path / "sources.toml"
    sources.write_text(
        f'[[sources]]\nkind = "folder"\npath = "{incoming}"\ninterval_seconds = 0.5\n'
        "settle_seconds = 0.2\ndelete_after_taken = true\n"
    )
    gateway = GatewayProcess(tmp_path / "spool", cloud.url, credential, sources)
    gateway.start()
    try:
        yield cloud, gateway, incoming
    finally:
        gateway.stop()
        cloud.stop()


def _storescu(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["storescu", "-aec", "H1GW", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _cloud_instances(cloud: Cloud, study: str) -> list[dict[str, object]]:
    response = cloud.get(f"/dicom-web/studies/{study}/instances")
    return [] if response.status_code == 204 else list(response.json())


@pytest.mark.slow  # heavy: CI runs it, the quick local run leaves it out
def test_kill_9_and_cloud_outage_lose_nothing_and_duplicate_nothing(
    system: tuple[Cloud, GatewayProcess, Path], series: list[Path], tmp_path: Path
) -> None:
    cloud, gateway, incoming = system
    study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    # Kill the gateway three times while storescu is sending; restart it each time.
    for round_number in range(3):
        sender = _storescu(gateway.port, series)
        time.sleep(0.4 + 0.3 * round_number)
        gateway.kill()
        sender.wait(timeout=60)
        gateway.start()
    # The cloud goes away mid-forward, and comes back.
    cloud.stop()
    sender = _storescu(gateway.port, series)  # the PACS resends the whole study
    assert sender.wait(timeout=120) == 0, "gateway must accept while the cloud is down"
    time.sleep(1.5)
    cloud.start()
    # A malformed file arrives by the watched folder; it must not stop the flow.
    (incoming / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    _wait_for(lambda: len(_cloud_instances(cloud, study)) == len(series), 120, "all instances")

    _wait_for(lambda: not (incoming / "broken.dcm").exists(), 30, "the broken file taken")
    status = json.loads(
        subprocess.run(
            [*CLI, "gateway", "status", "--spool-dir", str(gateway.spool), "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert status["queued"] == 0
    assert any("broken.dcm" in q["origin"] for q in status["quarantine"])
    # exactly once, bit-exact: same SHA-256 per SOP Instance UID on both sides
    instances = _cloud_instances(cloud, study)
    sops = [str(i["00080018"]["Value"][0]) for i in instances]
    assert len(sops) == len(set(sops)) == len(series)
    spooled = Spool(gateway.spool).study_manifest(study)
    held = httpx.get(
        f"{cloud.url}/gateway-api/v1/studies/{study}/manifest",
        headers={"Authorization": f"Bearer {gateway.credential}"},
        timeout=10,
    ).json()["instances"]
    assert {i["sop_instance_uid"]: i["sha256"] for i in held} == spooled
    # and the pixels are the modality's
    sent = {}
    for path in series:
        dataset = pydicom.dcmread(path)
        sent[str(dataset.SOPInstanceUID)] = dataset.PixelData
    series_uid = instances[0]["0020000E"]["Value"][0]
    for sop in sops[:10]:
        got = cloud.get(
            f"/dicom-web/studies/{study}/series/{series_uid}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        boundary = parse_media_type(got.headers["content-type"]).params["boundary"]
        [part] = split_multipart(got.content, boundary)
        assert pydicom.dcmread(io.BytesIO(part.content)).PixelData == sent[sop]
