"""A running gateway with a sources file: Q/R pull from Orthanc as the hospital PACS, an HTTP
push and a watched folder all reach the cloud; the PACS is not asked twice for what is held."""

from __future__ import annotations

import io
import socket
import time
from datetime import date
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from cloud.archive import Archive
from cloud.errors import InstanceNotFoundError
from gateway.config import GatewayConfig
from gateway.service import Gateway
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10, write_files
from tests.support.orthanc import OrthancServer
from tests.support.ports import free_ports
from tests.support.servers import http_base

pytestmark = pytest.mark.needs_orthanc


def _study(patient_id: str, slices: int) -> list[bytes]:
    spec = StudySpec(
        patient=PatientSpec(patient_id=patient_id, patient_name="Qian^Ba"),
        study_date=date.today().strftime("%Y%m%d"),
    )
    return [to_part10(ds) for ds in ct_series(spec, slices=slices, size=16)]


def _study_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)


def _wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_source_of_a_running_gateway_reaches_the_cloud(
    sqlite_node: Node, tmp_path: Path
) -> None:
    archive = sqlite_node.archive
    credential = archive.hospitals.add_hospital("H1", "One", ae_title="H1GW")
    pacs_study, pushed_study, dropped_study = (
        _study("QR-1", 4),
        _study("PUSH-1", 2),
        _study("DIR-1", 2),
    )
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    push_port, scp_port = free_ports(2)
    with OrthancServer(
        config_overrides={"DicomModalities": {"H1GW": ["H1GW", "127.0.0.1", scp_port]}}
    ) as orthanc:
        for data in pacs_study:
            httpx.post(f"{orthanc.base_url}/instances", content=data).raise_for_status()
        config = GatewayConfig(
            cloud_url=http_base(sqlite_node),
            credential=credential,
            spool_dir=tmp_path / "spool",
            hospital_id="H1",
            ae_title="H1GW",
            dicom_port=scp_port,
            sources=[
                {
                    "kind": "qr",
                    "host": "127.0.0.1",
                    "port": orthanc.dicom_port,
                    "ae_title": orthanc.aet,
                    "method": "get",
                    "days": 1,
                    "interval_seconds": 0.5,
                },
                {"kind": "http_push", "port": push_port, "credential": "push-secret"},
                {
                    "kind": "folder",
                    "path": str(incoming),
                    "settle_seconds": 0.1,
                    "delete_after_taken": True,
                    "interval_seconds": 0.2,
                },
            ],
        )
        gateway = Gateway(config)
        gateway.start()
        try:
            _wait_for(lambda: _held(archive, pacs_study), 30, "the PACS study in the cloud")
            # HTTP push, the way a hospital system would: dicomweb-client's STOW-RS
            push = DICOMwebClient(
                url=f"http://127.0.0.1:{push_port}", headers={"Authorization": "Bearer push-secret"}
            )
            _wait_for(lambda: _port_open(push_port), 10, "the push listener")
            push.store_instances([pydicom.dcmread(io.BytesIO(d)) for d in pushed_study])
            write_files(
                (pydicom.dcmread(io.BytesIO(d)) for d in dropped_study), incoming / "cd-import"
            )
            _wait_for(lambda: _held(archive, pushed_study), 30, "the pushed study")
            _wait_for(lambda: _held(archive, dropped_study), 30, "the dropped study")
            _wait_for(lambda: not list(incoming.rglob("*.dcm")), 10, "dropped files deleted")
            # The PACS study is held now: later polls do not retrieve it again.
            entries_before = len(gateway.spool.entries())
            time.sleep(1.5)
            assert len(gateway.spool.entries()) == entries_before
            refused = httpx.post(
                f"http://127.0.0.1:{push_port}/instances",
                content=pushed_study[0],
                headers={"Content-Type": "application/dicom", "Authorization": "Bearer wrong"},
            )
            assert refused.status_code == 401
        finally:
            gateway.close()
    owner = archive.hospitals.by_id("H1")
    assert owner is not None
    for study in (pacs_study, pushed_study, dropped_study):
        assert len(archive.hospitals.study_manifest(owner, _study_uid(study[0]))) == len(study)


def _held(archive: Archive, study: list[bytes]) -> bool:
    try:
        return len(archive.locate(_study_uid(study[0]))) == len(study)
    except InstanceNotFoundError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
